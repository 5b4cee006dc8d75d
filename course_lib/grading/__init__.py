"""The grading chain on top of nbgrader, one step a module.

    course      the course on disk, nbgrader's settings, `release`
    collect     find submissions (nbgrader layout, <student>.ipynb, LMS downloads)
    assemble    the notebook to grade: the student's answers in the instructor's cells
    demos       which demonstration cells a graded run can skip without changing a grade
    sandbox     where student code runs (bubblewrap, `nobody`, resource limits)
    warm        kernels forked from one preloaded process per grading thread
    run         run one notebook in a sandboxed kernel, cell by cell, with limits
    score       points and a reason for every test cell
    gradebook   nbgrader's gradebook, results, grades.csv
    feedback    per-student HTML without hidden tests
    report      the instructor's report
    pipeline    `course autograde`: all of the above, in parallel on Dask
    selfcheck   `course check`: one notebook, the same way

Imports are lazy so that `nbgrader_config.py` (read by every nbgrader command) stays cheap.
"""

from __future__ import annotations

from course_lib.grading.course import (
    CELL_TIMEOUT_S,
    RELEASE_DIR,
    SOURCE_DIR,
    apply_nbgrader_settings,
    assignments,
    find_course_root,
    nbgrader_config,
    release,
    source_notebooks,
)


def __getattr__(name: str):
    lazy = {
        "check_notebook": "selfcheck", "format_results": "selfcheck", "autograde": "pipeline",
        "load_grades": "gradebook", "write_csv": "gradebook",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f"course_lib.grading.{lazy[name]}"), name)
    raise AttributeError(f"module 'course_lib.grading' has no attribute {name!r}")


__all__ = [
    "CELL_TIMEOUT_S", "RELEASE_DIR", "SOURCE_DIR", "apply_nbgrader_settings", "assignments", "find_course_root",
    "nbgrader_config", "release", "source_notebooks", "check_notebook", "format_results", "autograde",
    "load_grades", "write_csv",
]
