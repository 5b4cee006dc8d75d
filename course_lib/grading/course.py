"""The course on disk and nbgrader's settings for it: where things live, and `release`.

Layout (the course root is the repository root, where `nbgrader_config.py` lives):

    solutions/<assignment>/<nb>.ipynb          nbgrader source notebooks (solutions, hidden tests)
    notebooks/<assignment>/<nb>.ipynb          released student notebooks (generated)
    submitted/<student>/<assignment>/          collected submissions (nbgrader's layout)
    gradebook.db                               nbgrader's gradebook (written by the grading process only)
    autograded/<student>/<assignment>/<nb>.ipynb   the graded runs (the formgrader shows them)
    feedback/<student>/<assignment>/<nb>.html  what a student gets back
    grading/<assignment>/results/<student>/<nb>.json   per-test points and reasons, integrity
                                               flags, timings: for the instructor only
    grading/<assignment>/report.html           the instructor's report

nbgrader's Python API does not read `nbgrader_config.py`, so every entry point here builds its
settings with `nbgrader_config(root)`; `nbgrader_config.py` calls the same function so the
nbgrader CLI and formgrader agree with these commands.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

SOURCE_DIR = "solutions"
RELEASE_DIR = "notebooks"
COURSE_ID = "mech-interp"
CELL_TIMEOUT_S = 180  # one cell; the first SmolLM2 load on a fresh machine takes ~20 s
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


def results_dir(root: Path, assignment: str) -> Path:
    """Where the per-test results of every graded notebook are kept (instructor only)."""
    return Path(root) / "grading" / assignment / "results"
