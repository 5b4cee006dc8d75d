"""Points and reasons: one outcome per test cell of a graded run.

A test cell that ran scores by nbgrader's rule (`nbgrader.utils.determine_grade`): an error or
anything on stderr scores zero, anything else full points. nbgrader also reads partial credit from
a number the cell displays; no test of this course displays one, and a student function could
(`sys.displayhook(1.0)` inside a failing test would score it), so that part is left out. What
nbgrader does not see is scored zero with the reason, never as passed: a cell that timed out,
one in which the kernel died, one never reached (jupyter/nbgrader #427 counted a dead kernel as
passed), a notebook that could not be read or run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import nbformat

from course_lib.grading.assemble import grade_id, is_test


@dataclass
class TestOutcome:
    """One test cell of one student's notebook."""

    test: str  # the cell's grade id
    points: float
    max_points: float
    reason: str = ""  # why points were lost ("" when none were)
    hidden: bool = False


@dataclass
class NotebookGrade:
    """Everything the grading learnt about one student's notebook."""

    student: str
    notebook: str
    tests: list[TestOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what assembling changed (edited tests, ...)
    flags: list[dict] = field(default_factory=list)  # integrity flags (for the instructor)
    problem: str = ""  # why the notebook as a whole could not be graded normally
    seconds: float = 0.0
    sandbox: str = ""
    kernel: str = ""  # "warm" (forked from a preloaded process) or "cold" (a fresh one); "" if nothing ran
    source_file: str = ""

    @property
    def points(self) -> float:
        return sum(t.points for t in self.tests)

    @property
    def max_points(self) -> float:
        return sum(t.max_points for t in self.tests)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "NotebookGrade":
        tests = [TestOutcome(**t) for t in data.pop("tests", [])]
        return cls(tests=tests, **data)


def test_cells(source: nbformat.NotebookNode) -> list[tuple[str, float, bool]]:
    """(grade id, max points, hidden) of each test cell of a source notebook, in order."""
    return [
        (grade_id(c), float(c.metadata.nbgrader.get("points", 0)), "BEGIN HIDDEN TESTS" in c.source)
        for c in source.cells
        if c.cell_type == "code" and is_test(c)
    ]


def zero_grade(student: str, notebook: str, source: nbformat.NotebookNode, reason: str) -> NotebookGrade:
    """Every test zero with one reason (not submitted, unreadable, the run failed)."""
    grade = NotebookGrade(student, notebook, problem=reason)
    grade.tests = [TestOutcome(gid, 0.0, pts, reason, hidden) for gid, pts, hidden in test_cells(source)]
    return grade


def first_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:limit] if lines else ""


def failure_reason(cell) -> str:
    """The first line of what made a test cell fail: the checker's message, or the error."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            message = first_line(out.get("evalue", ""))
            ename = out.get("ename", "Error")
            if ename == "AssertionError" and message:
                return message
            if ename == "StdinNotImplementedError":
                return "called input(): there is no one to type while grading"
            return f"{ename}: {message}" if message else ename
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            return f"wrote to stderr (nbgrader scores that as failed): {first_line(out.get('text', ''), 200)}"
    return "failed"


def score_run(
    student: str, notebook: str, source: nbformat.NotebookNode, executed: nbformat.NotebookNode,
    status: dict[str, str], tampered: list[str] = (), missing_answers: list[str] = (),
) -> NotebookGrade:
    """Score every test cell of `source` from the executed notebook and the cells' statuses."""
    where = {grade_id(c): (i, c) for i, c in enumerate(executed.cells) if grade_id(c)}
    grade = NotebookGrade(student, notebook)
    for gid, max_points, hidden in test_cells(source):
        index, cell = where.get(gid, (None, None))
        state = status.get(str(index), "not run") if index is not None else "not in the graded run"
        if state.startswith("ok"):
            failed = any(o.get("output_type") == "error" or (o.get("output_type") == "stream" and o.get("name") == "stderr")
                         for o in cell.get("outputs", []))
            points = 0.0 if failed else max_points
            reason = failure_reason(cell) if failed else ""
        elif state == "timed out":
            points, reason = 0.0, "timed out"
        elif state == "kernel died":
            points, reason = 0.0, "kernel died (out of memory, os._exit, a crash)"
        else:
            points, reason = 0.0, state
        if reason and gid in tampered:
            reason += " (this test cell had been edited or deleted; the original ran)"
        if reason and missing_answers and "notimplemented" in reason.lower().replace(" ", ""):
            reason += f" (answer cell deleted: {', '.join(missing_answers)})"
        if reason and index is not None:
            reason += _answer_context(executed, status, index)
        grade.tests.append(TestOutcome(gid, points, max_points, reason, hidden))
    return grade


def _answer_context(executed, status: dict[str, str], test_index: int) -> str:
    """' (its answer cell add timed out)' when the answer cell above a failed test went wrong itself."""
    from course_lib.grading.assemble import is_answer

    for i in range(test_index - 1, -1, -1):
        cell = executed.cells[i]
        if not is_answer(cell):
            continue
        state = status.get(str(i), "")
        if state == "timed out":
            return f" (its answer cell {grade_id(cell)} timed out)"
        error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
        if error is not None:
            return f" (its answer cell {grade_id(cell)} raised {error.get('ename')}: {first_line(error.get('evalue', ''), 150)})"
        return ""
    return ""
