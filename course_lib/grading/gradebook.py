"""Where grades are kept: nbgrader's gradebook, the results folder, and grades.csv.

Only the grading process writes here, after a run has finished; no student kernel can reach
these files (see `sandbox`). Every graded notebook overwrites its previous grade, including a
re-grade that failed: it then scores zero with the reason, never leaving an older grade standing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from course_lib.grading.course import results_dir
from course_lib.grading.score import NotebookGrade

CSV_COLUMNS = ["student", "notebook", "test", "points", "max_points", "reason", "hidden"]


def _result_path(root: Path, assignment: str, student: str, notebook: str) -> Path:
    return results_dir(root, assignment) / student / f"{notebook}.json"


def save_grade(root: Path, assignment: str, grade: NotebookGrade, executed_json: str | None) -> None:
    """Keep one graded notebook: its result JSON and its executed run (for the formgrader)."""
    path = _result_path(root, assignment, grade.student, grade.notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(grade.to_json(), indent=1))
    partial.replace(path)
    run = Path(root) / "autograded" / grade.student / assignment / f"{grade.notebook}.ipynb"
    run.parent.mkdir(parents=True, exist_ok=True)
    if executed_json:
        run.write_text(executed_json)
    else:
        run.unlink(missing_ok=True)


def load_grades(root: Path, assignment: str) -> list[NotebookGrade]:
    """Every kept result of `assignment`, ordered by student and notebook."""
    grades = []
    for path in sorted(results_dir(root, assignment).glob("*/*.json")):
        grades.append(NotebookGrade.from_json(json.loads(path.read_text())))
    return grades


def write_gradebook(root: Path, assignment: str, grades: list[NotebookGrade]) -> None:
    """Put the scores into nbgrader's gradebook (the formgrader and `nbgrader export` read it)."""
    import warnings

    from nbgrader.api import Gradebook, MissingEntry

    # nbgrader 0.9 with SQLAlchemy 2 warns on every new submission ("not in session"); the rows
    # are written all the same (the tests read them back).
    with warnings.catch_warnings(), Gradebook(f"sqlite:///{Path(root) / 'gradebook.db'}") as gb:
        warnings.simplefilter("ignore")
        for student in sorted({g.student for g in grades}):
            gb.update_or_create_student(student)
            try:
                gb.find_submission(assignment, student)
            except MissingEntry:
                gb.add_submission(assignment, student)
        for grade in grades:
            for test in grade.tests:
                try:
                    cell = gb.find_grade(test.test, grade.notebook, assignment, grade.student)
                except MissingEntry:
                    continue  # a test the gradebook does not know (the release is regenerated first)
                cell.auto_score = test.points
                cell.manual_score = None
                cell.needs_manual_grade = False
        gb.db.commit()


def write_csv(grades: list[NotebookGrade], out: Path) -> Path:
    """grades.csv: one row per student x notebook x test, with the reason for every lost point."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for grade in grades:
            for t in grade.tests:
                writer.writerow({
                    "student": grade.student, "notebook": grade.notebook, "test": t.test,
                    "points": f"{t.points:g}", "max_points": f"{t.max_points:g}",
                    "reason": t.reason, "hidden": "yes" if t.hidden else "no",
                })
    return out


def write_totals_csv(grades: list[NotebookGrade], notebooks: list[str], out: Path) -> Path:
    """totals.csv: one row per student, points per notebook and in all (for an LMS upload)."""
    by_student: dict[str, dict[str, NotebookGrade]] = {}
    for grade in grades:
        by_student.setdefault(grade.student, {})[grade.notebook] = grade
    with Path(out).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["student", *notebooks, "total", "max_total", "needs_a_look"])
        for student, mine in sorted(by_student.items()):
            row = [f"{mine[n].points:g}" if n in mine else "" for n in notebooks]
            total = sum(g.points for g in mine.values())
            max_total = sum(g.max_points for g in mine.values())
            look = "yes" if any(needs_a_look(g) for g in mine.values()) else ""
            writer.writerow([student, *row, f"{total:g}", f"{max_total:g}", look])
    return Path(out)


def needs_a_look(grade: NotebookGrade) -> list[str]:
    """Why an instructor should open this notebook (empty when nothing stands out)."""
    why = []
    if grade.flags:
        why.append(f"{len(grade.flags)} integrity flag(s): " + "; ".join(sorted({f['reason'] for f in grade.flags}))[:300])
    if grade.problem and grade.problem != "not submitted":  # a missing notebook is in the grades, not a puzzle
        why.append(grade.problem)
    kinds = {t.reason for t in grade.tests if t.reason}
    kinds.discard("not submitted")
    for word, label in (("timed out", "a cell timed out"), ("kernel died", "the kernel died"),
                        ("not run", "cells never ran"), ("edited or deleted", "test cells were tampered with")):
        if any(word in k for k in kinds):
            why.append(label)
    why += [n for n in grade.notes if "test cell" in n or "locked cell" in n or "not part of the course" in n]
    return list(dict.fromkeys(why))
