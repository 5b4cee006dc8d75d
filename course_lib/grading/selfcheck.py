"""`course check NOTEBOOK`: a learner grades their own notebook exactly as the class is graded.

The same steps as `course autograde` (assemble with the hidden tests, run top to bottom, score
by nbgrader's rule), for one notebook, in a scratch folder: nothing in the course is written.
The kernel runs unsandboxed (it is the learner's own code, on their own machine).
"""

from __future__ import annotations

import nbformat

from pathlib import Path

from course_lib.grading import course
from course_lib.grading.assemble import assemble, read_submission
from course_lib.grading.collect import identify_notebook, identifying_ids
from course_lib.grading.demos import mark_skips
from course_lib.grading.run import RunSettings, run_task
from course_lib.grading.score import NotebookGrade, score_run


def check_notebook(notebook: Path, root: Path | None = None, cell_timeout_s: float = course.CELL_TIMEOUT_S) -> list[NotebookGrade]:
    """Grade one student notebook exactly as the autograder would; returns its grade (in a list)."""
    from course_lib.models.pretrained import cache_dir

    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"No notebook at {notebook}.")
    root = Path(root) if root else course.find_course_root(notebook.parent)
    sources = {p.stem: p for a in course.assignments(root) for p in course.source_notebooks(root, a)}
    ids = {name: identifying_ids(nbformat.read(p, 4)) for name, p in sources.items()}
    name, _ = identify_notebook(notebook, ids)
    if name is None:
        raise FileNotFoundError(
            f"{notebook.name} is not a course notebook: none of that name in {root / course.SOURCE_DIR}."
        )
    source_path = sources[name]
    source = nbformat.read(source_path, 4)
    release_path = root / course.RELEASE_DIR / source_path.parent.name / source_path.name
    release = nbformat.read(release_path, 4)
    assembled = assemble(source, release, read_submission(notebook.read_bytes()))
    mark_skips(assembled.notebook, source)  # as `course autograde` does
    settings = RunSettings(cell_timeout_s=cell_timeout_s, env={"COURSE_CACHE_DIR": str(cache_dir().resolve())})
    result = run_task(nbformat.writes(assembled.notebook), settings.__dict__, wall_timeout_s=3600)
    if not result.notebook:
        raise RuntimeError(f"the notebook could not be run: {result.failure}")
    executed = nbformat.reads(result.notebook, 4)
    grade = score_run("self-check", name, source, executed, result.status,
                      assembled.tampered_tests, assembled.answers_missing)
    grade.notes, grade.problem = assembled.notes, result.failure
    return [grade]


def format_results(grades: list[NotebookGrade]) -> str:
    """A plain-text report: score per test, the first line of each failure, what is left."""
    lines = []
    for nb in grades:
        lines.append(f"{nb.notebook}: {nb.points:g} / {nb.max_points:g} points")
        for note in nb.notes + ([nb.problem] if nb.problem else []):
            lines.append(f"  note: {note}")
        for t in nb.tests:
            mark = "\u2714" if t.points >= t.max_points else "\u2718"
            line = f"  {mark} {t.test:<40} {t.points:g}/{t.max_points:g}"
            if t.points < t.max_points and t.reason:
                line += f"   {t.reason[:200]}"
            lines.append(line)
        left = [t.test for t in nb.tests if t.points < t.max_points]
        lines.append("  Left to do: " + (", ".join(left) if left else "nothing - all tests pass."))
    return "\n".join(lines)
