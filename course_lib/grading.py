"""The grading chain on top of nbgrader: release, self-check, autograde a class, export grades.

Layout (the course root is the repository root, where `nbgrader_config.py` lives):

    solutions/<assignment>/<nb>.ipynb     nbgrader source notebooks (with solutions)
    notebooks/<assignment>/<nb>.ipynb     released student notebooks (generated)
    submitted/<student>/<assignment>/     collected submissions (instructor)
    autograded/, feedback/, gradebook.db  written by grading (never committed)
    integrity/<assignment>/<student>.json out-of-kernel tamper flags, for the instructor only

nbgrader's Python API does not read `nbgrader_config.py`, so every entry point here builds its
settings with `nbgrader_config(root)`; `nbgrader_config.py` calls the same function so the
nbgrader CLI and formgrader agree with these commands.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

SOURCE_DIR = "solutions"
RELEASE_DIR = "notebooks"
COURSE_ID = "mech-interp"
CELL_TIMEOUT_S = 180  # one cell; the first SmolLM2 load on a fresh machine takes ~20 s
STUDENT_TIMEOUT_S = 900  # one student's whole assignment, enforced from outside the kernel
KERNEL_NAME = "python3"


def find_course_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding solutions/ and nbgrader_config.py."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / SOURCE_DIR).is_dir() and (folder / "nbgrader_config.py").is_file():
            return folder
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / SOURCE_DIR).is_dir():
        return package_parent
    raise FileNotFoundError(
        f"No course root found from {start}: run this inside the course folder (the one with "
        f"{SOURCE_DIR}/ and nbgrader_config.py) or pass --root."
    )


def apply_nbgrader_settings(c, root: Path) -> None:
    """Write the course's nbgrader settings into the traitlets config `c`."""
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.source_directory = SOURCE_DIR
    c.CourseDirectory.release_directory = RELEASE_DIR
    c.CourseDirectory.db_url = f"sqlite:///{Path(root) / 'gradebook.db'}"
    c.Execute.timeout = CELL_TIMEOUT_S
    c.Execute.interrupt_on_timeout = True
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    # Student notebooks must never carry outputs or the instructor's execution state.
    c.ClearOutput.enabled = True


def nbgrader_config(root: Path):
    """A traitlets Config with the course's nbgrader settings (for NbGraderAPI)."""
    from traitlets.config import Config

    c = Config()
    apply_nbgrader_settings(c, root)
    return c


def _put_venv_on_path() -> None:
    """nbgrader runs the `alembic` executable to create a gradebook: it must be on PATH even when
    the virtual environment is not activated (e.g. `.venv/bin/course ...`)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path


def nbgrader_api(root: Path):
    """NbGraderAPI for the course at `root`, logging quietly."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    _put_venv_on_path()
    config = nbgrader_config(root)
    coursedir = CourseDirectory(config=config)
    return NbGraderAPI(coursedir=coursedir, config=config)


def assignments(root: Path) -> list[str]:
    """Assignment folders under solutions/."""
    return sorted(p.name for p in (root / SOURCE_DIR).iterdir() if p.is_dir() and not p.name.startswith("."))


def source_notebooks(root: Path, assignment: str) -> list[Path]:
    """The solution notebooks of `assignment`, in order."""
    return sorted((root / SOURCE_DIR / assignment).glob("*.ipynb"))


def _fail(action: str, result: dict) -> None:
    if not result.get("success"):
        detail = result.get("error") or result.get("log") or "no details"
        raise RuntimeError(f"nbgrader {action} failed:\n{detail}")


def normalize_notebook(path: Path) -> None:
    """Strip outputs and execution counts and write the JSON in one stable format."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.write(nb, path)


def release(root: Path, assignment: str | None = None, release_dir: Path | None = None) -> list[Path]:
    """Regenerate the student notebooks from solutions/ (always forced); returns their paths.

    `release_dir` writes the release somewhere else (used to test that notebooks/ is current).
    """
    root = Path(root)
    written = []
    for a in [assignment] if assignment else assignments(root):
        with _course_copy(root, a, release_dir) as (work_root, out_dir):
            api = nbgrader_api(work_root)
            _fail("generate_assignment", api.generate_assignment(a, force=True))
            target = (release_dir or root / RELEASE_DIR) / a
            if release_dir is not None:
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(out_dir / a, target)
        for nb in sorted(target.glob("*.ipynb")):
            normalize_notebook(nb)
            written.append(nb)
    return written


@contextlib.contextmanager
def _course_copy(root: Path, assignment: str, release_dir: Path | None):
    """Run in the real course root, or, for an out-of-tree release, in a temporary copy."""
    if release_dir is None:
        yield root, root / RELEASE_DIR
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        shutil.copytree(root / SOURCE_DIR / assignment, tmp_root / SOURCE_DIR / assignment)
        yield tmp_root, tmp_root / RELEASE_DIR


# ---------------------------------------------------------------- grading results


@dataclass
class TestResult:
    """One graded test cell of one notebook."""

    name: str
    score: float
    max_score: float
    error: str = ""


@dataclass
class NotebookResult:
    """Scores of one notebook of one student."""

    notebook: str
    tests: list[TestResult] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_score for t in self.tests)


def _cell_errors(autograded_nb: Path) -> dict[str, str]:
    """grade_id -> the last line of the error each failing test cell printed."""
    import nbformat

    if not autograded_nb.exists():
        return {}
    nb = nbformat.read(autograded_nb, as_version=4)
    errors = {}
    for cell in nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors[grade_id] = f"{out.get('ename')}: {out.get('evalue')}".strip()
    return errors


def _grade_cell_order(source_nb: Path) -> dict[str, int]:
    """grade_id -> position in the source notebook, so reports follow the notebook's order."""
    try:
        cells = json.loads(source_nb.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return {}
    ids = [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in cells]
    return {grade_id: i for i, grade_id in enumerate(ids) if grade_id}


def read_results(root: Path, assignment: str, student: str) -> list[NotebookResult]:
    """Per-notebook, per-test scores of `student` from the gradebook and the autograded notebooks."""
    from nbgrader.api import Gradebook

    results = []
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for nb in gb.find_assignment(assignment).notebooks:
            result = NotebookResult(nb.name)
            errors = _cell_errors(root / "autograded" / student / assignment / f"{nb.name}.ipynb")
            try:
                submitted = gb.find_submission_notebook(nb.name, assignment, student)
                grades = {g.name: g for g in submitted.grades}
            except Exception:  # missing submission: every test scores zero
                grades = {}
            order = _grade_cell_order(root / SOURCE_DIR / assignment / f"{nb.name}.ipynb")
            for cell in sorted(nb.grade_cells, key=lambda c: (order.get(c.name, len(order)), c.name)):
                grade = grades.get(cell.name)
                score = float(grade.score) if grade is not None and grade.score is not None else 0.0
                error = errors.get(cell.name, "" if grade is not None else "notebook not graded")
                result.tests.append(TestResult(cell.name, score, float(cell.max_score), error))
            results.append(result)
    return results


def format_results(results: list[NotebookResult]) -> str:
    """A plain-text report: score per test, the first line of each failure, what is left."""
    lines = []
    for nb in results:
        lines.append(f"{nb.notebook}: {nb.score:g} / {nb.max_score:g} points")
        for t in nb.tests:
            mark = "\u2714" if t.score >= t.max_score else "\u2718"
            line = f"  {mark} {t.name:<40} {t.score:g}/{t.max_score:g}"
            if t.score < t.max_score and t.error:
                first = t.error.splitlines()[0]
                line += f"   {first[:200]}"
            lines.append(line)
        left = [t.name for t in nb.tests if t.score < t.max_score]
        lines.append("  Left to do: " + (", ".join(left) if left else "nothing - all tests pass."))
    return "\n".join(lines)


# ---------------------------------------------------------------- self-check


def check_notebook(notebook: Path, root: Path | None = None) -> list[NotebookResult]:
    """Grade one student notebook exactly as the autograder would, in a temporary course copy."""
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"No notebook at {notebook}.")
    root = Path(root) if root else find_course_root(notebook.parent)
    matches = [p for a in assignments(root) for p in source_notebooks(root, a) if p.name == notebook.name]
    if not matches:
        raise FileNotFoundError(
            f"{notebook.name} is not a course notebook: none of that name in {root / SOURCE_DIR}."
        )
    source = matches[0]
    assignment = source.parent.name
    student = "self-check"
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbgrader's SQLAlchemy warnings say nothing to a learner
        work = Path(tmp)
        shutil.copytree(source.parent, work / SOURCE_DIR / assignment)
        api = nbgrader_api(work)
        _fail("generate_assignment", api.generate_assignment(assignment, force=True))
        sub = work / "submitted" / student / assignment
        sub.mkdir(parents=True)
        shutil.copy(notebook, sub / notebook.name)
        with _kernel_noise_filtered():
            result = api.autograde(assignment, student, force=True, create=True)
        _fail("autograde", result)
        results = read_results(work, assignment, student)
    return [r for r in results if r.notebook == notebook.stem]


# The kernel warns on every start that loopback TCP is unencrypted; grading talks to it on this
# machine only, and the line would be the only thing a learner reads under their score.
_KERNEL_NOISE = ("Kernel is running over TCP without encryption",)


@contextlib.contextmanager
def _kernel_noise_filtered():
    """Hold back what child processes (the kernel) write to stderr; pass on all but known noise."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines() if not any(noise in line for noise in _KERNEL_NOISE)]
            if any(line.strip() for line in kept):
                print("\n".join(kept), file=sys.stderr)


# ---------------------------------------------------------------- a whole class


def _autograde_one(root: Path, assignment: str, student: str) -> None:
    """Autograde one student (run in a subprocess so a hang or crash cannot stop the batch)."""
    api = nbgrader_api(root)
    result = api.autograde(assignment, student, force=True, create=True)
    if not result.get("success"):
        print(result.get("error") or result.get("log"), file=sys.stderr)
        sys.exit(1)


def autograde_class(
    root: Path, assignment: str, timeout_s: float = STUDENT_TIMEOUT_S, students: list[str] | None = None
) -> dict[str, str]:
    """Autograde every submission of `assignment`; returns student -> status ("ok" or why not).

    Each student runs in its own process with a wall-clock limit: a hung or crashing submission
    is recorded and the batch goes on. Feedback is generated for every graded student.
    """
    from course_lib.integrity import scan_submission

    root = Path(root)
    submitted = root / "submitted"
    if not submitted.is_dir():
        raise FileNotFoundError(f"No submissions: {submitted} does not exist (submitted/<student>/{assignment}/).")
    # The gradebook learns the source cells (and hidden tests) from generate_assignment: run it
    # every time so grading always uses the current solutions/ (the release is deterministic).
    release(root, assignment)
    everyone = sorted(p.name for p in submitted.iterdir() if (p / assignment).is_dir())
    status = {}
    for student in students or everyone:
        cmd = [sys.executable, "-m", "course_lib.grading", "autograde-one", str(root), assignment, student]
        returncode, stderr = _run_with_deadline(cmd, timeout_s)
        if returncode is None:
            status[student] = f"timed out after {timeout_s:g} s: its tests score zero"
        else:
            status[student] = "ok" if returncode == 0 else f"autograde failed: {_last_line(stderr)}"
        flags = scan_submission(submitted / student / assignment)
        flags_file = integrity_file(root, assignment, student)
        flags_file.unlink(missing_ok=True)
        if flags:
            status[student] += f"; integrity flags: {len(flags)}"
            flags_file.parent.mkdir(parents=True, exist_ok=True)
            flags_file.write_text(json.dumps([f.__dict__ for f in flags], indent=1))
        print(f"{student}: {status[student]}", flush=True)
    _save_status(root, assignment, status)
    api = nbgrader_api(root)
    for student, state in status.items():
        if state.startswith("ok"):
            api.generate_feedback(assignment, student, force=True)
    return status


def integrity_file(root: Path, assignment: str, student: str) -> Path:
    """Where a student's integrity flags are written: for the instructor, outside autograded/ so
    nbgrader does not copy them into the student's feedback."""
    return root / "integrity" / assignment / f"{student}.json"


def _status_file(root: Path, assignment: str) -> Path:
    return root / "autograded" / f"status_{assignment}.json"


def _save_status(root: Path, assignment: str, status: dict[str, str]) -> None:
    """Merge this run's per-student outcome into autograded/status_<assignment>.json."""
    path = _status_file(root, assignment)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(status)
    path.write_text(json.dumps(previous, indent=1, sort_keys=True))


def _run_with_deadline(cmd: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run `cmd`; on timeout kill it and every descendant (the kernel runs in a session of its own)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
        return proc.returncode, stderr
    except subprocess.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(proc.pid)
            for child in parent.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        proc.kill()
        proc.communicate()
        return None, ""


def _last_line(text: str) -> str:
    lines = [l for l in (text or "").strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else "no error output"


def export_grades(root: Path, assignment: str, out_csv: Path) -> Path:
    """Write one row per student: total, each notebook, each test, integrity flags."""
    from nbgrader.api import Gradebook

    root = Path(root)
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        students = {s.id for s in gb.students}
    status_path = _status_file(root, assignment)
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    # A submission whose grading crashed or timed out may be missing from the gradebook: it
    # still gets a row (with zeros), never silently dropped.
    students = sorted(students | set(status))
    rows = []
    header: list[str] = ["student", "total", "max_total", "status"]
    for student in students:
        results = read_results(root, assignment, student)
        row = {
            "student": student,
            "total": sum(r.score for r in results),
            "max_total": sum(r.max_score for r in results),
            "status": status.get(student, "graded outside `course autograde`"),
        }
        for r in results:
            row[r.notebook] = r.score
            for t in r.tests:
                row[f"{r.notebook}:{t.name}"] = t.score
        flags_file = integrity_file(root, assignment, student)
        row["integrity_flags"] = len(json.loads(flags_file.read_text())) if flags_file.exists() else 0
        for key in row:
            if key not in header:
                header.append(key)
        rows.append(row)
    out_csv = Path(out_csv)
    with out_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return out_csv


def main(argv: list[str] | None = None) -> None:
    """Internal entry point: `python -m course_lib.grading autograde-one ROOT ASSIGNMENT STUDENT`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 4 and argv[0] == "autograde-one":
        with contextlib.redirect_stdout(io.StringIO()):
            _autograde_one(Path(argv[1]), argv[2], argv[3])
        return
    raise SystemExit("usage: python -m course_lib.grading autograde-one ROOT ASSIGNMENT STUDENT")


if __name__ == "__main__":
    main()
