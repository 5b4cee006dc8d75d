"""`course autograde`: grade every notebook of every student, in parallel, here or on a Dask cluster.

The steps, each in its own module: `collect` the submissions, `assemble` each into the notebook
to grade, `run` it in a `sandbox`ed kernel (a task: `jobs` threads on this machine by default,
Dask distributed workers with `scheduler=`), `score` it, then the grading process alone writes
the `gradebook`, grades.csv, the `feedback` pages and the `report`.

A task carries the assembled notebook as text and returns the run as text, so a worker needs
only the course package and its model cache, not the course folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from course_lib.grading import course
from course_lib.grading.assemble import UnreadableNotebook, assemble, read_submission
from course_lib.grading.collect import Submission, Unmatched, collect, identifying_ids
from course_lib.grading.demos import mark_skips
from course_lib.grading.gradebook import load_grades, save_grade, write_csv, write_gradebook, write_totals_csv
from course_lib.grading.run import RunSettings, never_started, run_task
from course_lib.grading.sandbox import choose_sandbox
from course_lib.grading.score import NotebookGrade, score_run, zero_grade

NOTEBOOK_TIMEOUT_S = 900  # one notebook of one student, all cells, from outside


@dataclass
class GradingRun:
    """What one `course autograde` did."""

    grades: list[NotebookGrade] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)
    sandbox: str = ""
    warning: str = ""
    wall_s: float = 0.0
    csv: Path | None = None


@dataclass
class CourseNotebook:
    """One notebook of the assignment: its source (with hidden tests) and its release."""

    name: str
    source: nbformat.NotebookNode
    release: nbformat.NotebookNode


def course_notebooks(root: Path, assignment: str) -> dict[str, CourseNotebook]:
    """The assignment's notebooks by name (the release must be current: `release` runs first)."""
    found = {}
    for path in course.source_notebooks(root, assignment):
        release = root / course.RELEASE_DIR / assignment / path.name
        found[path.stem] = CourseNotebook(path.stem, nbformat.read(path, 4), nbformat.read(release, 4))
    if not found:
        raise FileNotFoundError(f"No notebooks in {root / course.SOURCE_DIR / assignment}.")
    return found


def _hidden_paths(root: Path, submissions: Path) -> list[Path]:
    """What a grading kernel must not read: the whole course folder (solutions, its git history,
    other submissions, grades), the submissions, this machine's temporary folder (other tasks'
    files), and the folder the package was installed from. `sandbox` binds back, read-only, what
    a kernel needs from inside them (the package, the Python environment, the model cache)."""
    package_repo = Path(__file__).resolve().parents[2]
    hidden = [root, package_repo, submissions, Path(tempfile.gettempdir())]
    return list(dict.fromkeys(p.resolve() for p in hidden))


def autograde(
    root: Path,
    submissions: Path,
    assignment: str = "mech_interp",
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    cell_timeout_s: float = course.CELL_TIMEOUT_S,
    notebook_timeout_s: float = NOTEBOOK_TIMEOUT_S,
    sandbox: str | None = None,
    notebooks: list[str] | None = None,
    students: list[str] | None = None,
    memory_gb: float = 6.0,
    output: Path | None = None,
    progress: bool = True,
    skip_demos: bool = True,
    warm_kernels: bool = True,
) -> GradingRun:
    """Grade every submission under `submissions`; write the gradebook, grades.csv, feedback, report."""
    from course_lib.grading.feedback import write_feedback
    from course_lib.grading.report import write_report
    from course_lib.models.pretrained import cache_dir, ensure_smollm2_cache

    started = time.monotonic()
    root = Path(root).resolve()
    submissions = Path(submissions).resolve()
    if not submissions.exists():
        raise FileNotFoundError(
            f"No submissions at {submissions}: pass submitted/ (nbgrader's layout), a folder of "
            "<student>.ipynb files, or an LMS download (.zip or folder)."
        )
    course.release(root, assignment)  # the gradebook learns the current tests; the stubs are current
    nbs = course_notebooks(root, assignment)
    unknown = set(notebooks or []) - set(nbs)
    if unknown:
        raise ValueError(f"--notebook {', '.join(sorted(unknown))}: not in {assignment} (it has {', '.join(nbs)}).")
    wanted = [n for n in nbs if not notebooks or n in notebooks]
    ids = {name: identifying_ids(nb.source) for name, nb in nbs.items()}

    run = GradingRun()
    with tempfile.TemporaryDirectory(prefix="course-collect-") as unpack:
        found, run.unmatched = collect(submissions, assignment, ids, unpack_to=Path(unpack))
        if students:
            found = [s for s in found if s.student in students]
        if not found:
            raise FileNotFoundError(
                f"No submissions of {assignment} found in {submissions}"
                + (f" ({len(run.unmatched)} file(s) could not be matched: {run.unmatched[0].reason})" if run.unmatched else "")
                + ". Expected submitted/<student>/<assignment>/*.ipynb, <student>.ipynb files, or an LMS download."
            )
        box = choose_sandbox(_hidden_paths(root, submissions), require=sandbox)
        run.sandbox, run.warning = box.kind, box.warning
        if box.warning:
            print(f"warning: {box.warning}", file=sys.stderr)
        ensure_smollm2_cache()  # built once here: kernels see the cache read-only
        settings = RunSettings(
            cell_timeout_s=cell_timeout_s, sandbox_kind=box.kind, sandbox_hidden=box.hidden,
            sandbox_visible=box.visible, memory_bytes=int(memory_gb * 2**30),
            warm=warm_kernels and box.kind == "bubblewrap",
            env={"COURSE_CACHE_DIR": str(cache_dir().resolve()),
                 # Each kernel gets its share of this machine's cores (on a cluster: workers run
                 # one task per thread, so one core each).
                 "OMP_NUM_THREADS": str(1 if scheduler else max(1, (os.cpu_count() or 1) // max(1, jobs)))},
        )
        by_key = {(s.student, s.notebook): s for s in found}
        # A student whose only file was not a notebook of this assignment still gets rows.
        everyone = {s.student for s in found} | {u.student for u in run.unmatched if u.student}
        if students:
            everyone &= set(students)
        tasks: list[tuple[str, str, Submission | None]] = [
            (student, name, by_key.get((student, name))) for student in sorted(everyone) for name in wanted
        ]
        grades = _grade_all(tasks, nbs, settings, notebook_timeout_s, jobs, scheduler, progress, root, assignment,
                            skip_demos)
    for grade in grades:
        write_feedback(root, assignment, grade)
    kept = load_grades(root, assignment)
    write_gradebook(root, assignment, kept)
    run.grades = grades
    run.wall_s = time.monotonic() - started
    out = Path(output) if output else root / "grades.csv"
    run.csv = write_csv(kept, out)
    write_totals_csv(kept, list(nbs), out.with_name("totals.csv"))
    info = {"graded": len(grades), "wall_s": run.wall_s, "jobs": jobs, "scheduler": scheduler or "this machine",
            "demonstrations": "skipped where no graded cell depends on them" if skip_demos else "run",
            "sandbox": box.kind, "kernels": "warm (forked from a preloaded zygote)" if settings.warm else "cold",
            "unmatched": [{"path": str(u.path), "reason": u.reason} for u in run.unmatched]}
    write_report(root, assignment, kept, info)
    return run


def preflight(settings: RunSettings, submit=None) -> None:
    """Start one sandboxed kernel before grading anyone, where the tasks will run (`submit`): if it
    cannot run student code, stop with the reason instead of giving a whole class zero."""
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import course_lib.checks, torch, nbformat\nprint('grading kernel ready')")])
    args = (nbformat.writes(probe), asdict(settings), 300)
    result = submit(*args).result() if submit else run_task(*args)
    outputs = nbformat.reads(result.notebook, 4).cells[0].outputs if result.notebook else []
    if not any("grading kernel ready" in out.get("text", "") for out in outputs):
        detail = result.failure or "; ".join(result.status.values()) or "no output"
        errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o.get("output_type") == "error"]
        raise RuntimeError(
            f"The grading kernel does not start in the {settings.sandbox_kind!r} sandbox, so nobody was graded: "
            f"{'; '.join(errors) or detail}. Run `course doctor`, or try --sandbox none to see whether the sandbox is the cause."
        )


def _prepare(
    student: str, nb: CourseNotebook, sub: Submission | None, skip_demos: bool = True
) -> tuple[NotebookGrade | None, str, object]:
    """Either a finished grade (nothing to run) or the notebook to run and how it was assembled."""
    if sub is None:
        return zero_grade(student, nb.name, nb.source, "not submitted"), "", None
    try:
        student_nb = read_submission(sub.path.read_bytes())
    except (UnreadableNotebook, OSError) as err:
        grade = zero_grade(student, nb.name, nb.source, f"unreadable submission: {err}")
        grade.source_file = str(sub.path)
        return grade, "", None
    assembled = assemble(nb.source, nb.release, student_nb)
    if skip_demos:
        skipped, why = mark_skips(assembled.notebook, nb.source)
        assembled.notes.append(f"{skipped} demonstration cell(s) skipped" if skipped else f"demonstrations run: {why}")
    return None, nbformat.writes(assembled.notebook), assembled


def _grade_all(tasks, nbs, settings, notebook_timeout_s, jobs, scheduler, progress, root, assignment, skip_demos):
    """Run every task (local threads, or Dask workers with `scheduler`); score and keep each result as it arrives."""
    from tqdm.auto import tqdm

    from course_lib.grading import warm
    from course_lib.integrity import scan_cells

    grades: list[NotebookGrade] = []
    pending = {}
    bar = tqdm(total=len(tasks), unit="notebook", desc="grading", disable=not progress, file=sys.stderr)
    failures = 0

    def keep(grade: NotebookGrade, executed: str | None) -> None:
        nonlocal failures
        grade.sandbox = settings.sandbox_kind if executed else ""
        save_grade(root, assignment, grade, executed)
        grades.append(grade)
        failures += bool(grade.problem)
        bar.update(1)
        bar.set_postfix(failed=failures)

    if scheduler:
        from distributed import Client, as_completed

        client = Client(scheduler, timeout=60)
        submit = lambda *args: client.submit(run_task, *args, pure=False)  # noqa: E731

        def close() -> None:
            try:  # the workers' zygotes would hold memory until the next run
                client.run(warm.stop_all)
            except Exception as err:  # a worker gone: its zygotes went with it
                print(f"warning: could not stop every worker's preloaded kernel: {err}", file=sys.stderr)
            client.close()
    else:
        # On one machine each task only waits on its own grading process: threads are enough, and
        # they start instantly (a local Dask cluster adds seconds and opens sockets for nothing).
        from concurrent.futures import ThreadPoolExecutor, as_completed

        pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="grading")
        submit = lambda *args: pool.submit(run_task, *args)  # noqa: E731

        def close() -> None:
            pool.shutdown()
            warm.stop_all()
    try:
        preflight(settings, submit)
        for student, name, sub in tasks:
            nb = nbs[name]
            try:
                done, nb_json, assembled = _prepare(student, nb, sub, skip_demos)
            except Exception as err:  # whatever is wrong with one file, the batch goes on
                done = zero_grade(student, nb.name, nb.source,
                                  f"could not be prepared for grading: {type(err).__name__}: {str(err)[:200]}")
                done.source_file = str(sub.path) if sub else ""
            if done is not None:
                keep(done, None)
                continue
            future = submit(nb_json, asdict(settings), notebook_timeout_s)
            pending[future] = (student, nb, sub, assembled)
        for future in as_completed(list(pending)):
            student, nb, sub, assembled = pending.pop(future)
            try:
                result = future.result()
            except Exception as err:  # a worker lost, a task that raised: the grade is zero, with why
                grade = zero_grade(student, nb.name, nb.source, f"grading failed: {type(err).__name__}: {err}")
                grade.source_file = str(sub.path)
                keep(grade, None)
                continue
            grade = _score(student, nb, sub, assembled, result)
            flags = scan_cells(json.loads(nbformat.writes(assembled.notebook))["cells"], f"{nb.name}.ipynb")
            grade.flags = [asdict(f) for f in flags] + _runtime_flags(result.notebook)
            keep(grade, result.notebook or None)
    finally:
        bar.close()
        close()
    return sorted(grades, key=lambda g: (g.student, g.notebook))


def _score(student, nb, sub, assembled, result) -> NotebookGrade:
    if never_started(result):  # the machine's fault, not the student's: said so, and the report lists it
        why = next(iter(result.status.values())).removeprefix("not run: ")
        grade = zero_grade(student, nb.name, nb.source, f"grading error, not the student's: {why}; grade this notebook again")
    elif not result.notebook:
        grade = zero_grade(student, nb.name, nb.source, result.failure or "the run returned nothing")
    else:
        executed = nbformat.reads(result.notebook, as_version=4)
        grade = score_run(student, nb.name, nb.source, executed, result.status,
                          assembled.tampered_tests, assembled.answers_missing)
        if result.failure:
            grade.problem = result.failure
            for t in grade.tests:  # cells the cut-off run never finished
                if t.reason.startswith("not run") or t.reason == "not in the graded run":
                    t.reason = result.failure
    grade.notes = assembled.notes
    grade.seconds = result.seconds
    grade.kernel = result.kernel if result.notebook else ""
    grade.source_file = str(sub.path)
    return grade


def _runtime_flags(executed_json: str) -> list[dict]:
    """Flags from the run itself: a student cell that tried to write where it may not."""
    if not executed_json:
        return []
    flags = []
    for index, cell in enumerate(json.loads(executed_json).get("cells", [])):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") or meta.get("locked"):
            continue
        for out in cell.get("outputs", []):
            text = f"{out.get('ename', '')} {out.get('evalue', '')}"
            if "Read-only file system" in text or "Permission denied" in text:
                flags.append({"notebook": "", "cell": index, "line": 0, "code": text[:200],
                              "reason": "tried to write outside its scratch folder (blocked by the sandbox)"})
                break
    return flags
