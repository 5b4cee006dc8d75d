"""The notebook that is graded: the student's answers inside the instructor's cells.

nbgrader's rule (its OverwriteCells step) made strict: every cell the source notebook locks
(test cells, the import cell, the text) is restored from the source, hidden tests included; the
student's answer cells and their own cells are kept, in their order. What a student did to the
locked cells is noted, and never decides a grade by itself:

* a deleted test or locked cell is put back where it was (after the cell that preceded it);
* an edited or re-tagged one is replaced by the original;
* a deleted answer cell leaves the release's stub (it raises NotImplementedError);
* a duplicated answer cell: the last copy that differs from the stub is graded, as in a
  top-to-bottom run where the last definition wins;
* the import cell always runs first: it captures the checkers' trusted primitives before any
  student code (see `course_lib.checks._trust`).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field

import nbformat
from nbformat import NotebookNode

from course_lib.grading.collect import MAX_NOTEBOOK_BYTES


STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


class UnreadableNotebook(ValueError):
    """The submitted file is not a notebook that can be graded; the message says why."""


@dataclass
class Assembled:
    """The notebook to run, and what was done to the student's notebook to make it."""

    notebook: NotebookNode
    notes: list[str] = field(default_factory=list)  # for the instructor and the feedback
    answers_missing: list[str] = field(default_factory=list)  # answer cells the student deleted
    tampered_tests: list[str] = field(default_factory=list)  # test cells edited, re-tagged or deleted


def _meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _role(cell) -> tuple:
    """What nbgrader's metadata makes of a cell (the release adds checksums; those do not count)."""
    meta = _meta(cell)
    return tuple(meta.get(k) for k in ("grade_id", "grade", "solution", "locked", "points"))


def grade_id(cell) -> str | None:
    gid = _meta(cell).get("grade_id")
    return gid if isinstance(gid, str) else None


def is_answer(cell) -> bool:
    """An autograded answer cell: the student writes it."""
    return bool(_meta(cell).get("solution")) and not _meta(cell).get("grade")


def is_test(cell) -> bool:
    """A test cell: it carries points and the student must not change it."""
    return bool(_meta(cell).get("grade")) and not _meta(cell).get("solution")


def read_submission(data: bytes) -> NotebookNode:
    """Parse a submitted file, or raise UnreadableNotebook with what is wrong in words."""
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise UnreadableNotebook(f"the file is {len(data) / 1e6:.0f} MB (limit {MAX_NOTEBOOK_BYTES / 1e6:.0f} MB)")
    if not data.strip():
        raise UnreadableNotebook("the file is empty")
    try:
        raw = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError as err:
        raise UnreadableNotebook(f"the file is not valid notebook JSON ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise UnreadableNotebook("the file is JSON but not a notebook (it has no list of cells)")
    try:
        with warnings.catch_warnings():  # duplicated cells carry duplicate ids; nbformat renames them
            warnings.simplefilter("ignore")
            nb = nbformat.reads(json.dumps(raw), as_version=4)
    except Exception as err:  # nbformat raises many kinds on malformed cells
        raise UnreadableNotebook(f"the notebook is malformed ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(nb.get("metadata"), dict):
        nb.metadata = nbformat.NotebookNode()
    for cell in nb.cells:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise UnreadableNotebook("the notebook has a malformed cell")
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(line, str) for line in source):
            source = "".join(source)
        if not isinstance(source, str):
            raise UnreadableNotebook("the notebook has a cell whose source is not text")
        cell["source"] = source
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = nbformat.NotebookNode()
        nbgrader = cell["metadata"].get("nbgrader")
        if nbgrader is not None and not isinstance(nbgrader, dict):
            del cell["metadata"]["nbgrader"]
    return nb


def assemble(source: NotebookNode, release: NotebookNode, student: NotebookNode) -> Assembled:
    """The notebook to grade: `source` (with hidden tests) for locked cells, `student` for the rest.

    `release` gives the stub of each answer cell (what a deleted answer falls back to).
    """
    src_cells = source.cells
    locked = {grade_id(c): c for c in src_cells if grade_id(c) and not is_answer(c)}
    answers = {grade_id(c) for c in src_cells if grade_id(c) and is_answer(c)}
    stubs = {grade_id(c): c for c in release.cells if grade_id(c) in answers}
    released = {grade_id(c): c for c in release.cells if grade_id(c) in locked}
    by_id = {grade_id(c): c for c in src_cells if grade_id(c)}
    tests = {gid for gid, c in locked.items() if is_test(c)}
    out = Assembled(nbformat.v4.new_notebook())
    out.notebook.metadata = copy.deepcopy(source.metadata)  # the course's kernelspec, not the student's

    spec = student.metadata.get("kernelspec")
    spec_name = spec.get("name") if isinstance(spec, dict) else spec
    if spec_name not in (None, source.metadata.get("kernelspec", {}).get("name")):
        out.notes.append("kernelspec changed: graded with the course's kernel")

    # The last copy of each answer that differs from its stub (or the last copy at all).
    answer_copies: dict[str, list] = {}
    for cell in student.cells:
        if grade_id(cell) in answers:
            answer_copies.setdefault(grade_id(cell), []).append(cell)
    chosen_answer = {}
    for gid, copies in answer_copies.items():
        edited = [c for c in copies if c.source != stubs[gid].source] if gid in stubs else copies
        chosen_answer[gid] = (edited or copies)[-1]
        if len(copies) > 1:
            out.notes.append(f"answer cell {gid} appears {len(copies)} times: the last edited copy is graded")

    # Walk the student's cells, restoring locked ones; remember where each source cell landed.
    cells: list = []
    placed: set[str] = set()
    for cell in student.cells:
        gid = grade_id(cell)
        if gid in locked:
            if gid in placed:
                out.notes.append(f"locked cell {gid} appears twice: the copy is dropped")
                continue
            original = locked[gid]
            # Edited means: different from what the student was given (the release, hidden tests removed).
            given = released.get(gid, original)
            if cell.get("source") != given.source or _role(cell) != _role(given) or cell.cell_type != given.cell_type:
                what = "test cell" if gid in tests else "locked cell"
                out.notes.append(f"{what} {gid} was edited: the original is graded")
                if gid in tests:
                    out.tampered_tests.append(gid)
            cells.append(copy.deepcopy(original))
            placed.add(gid)
        elif gid in answers:
            if chosen_answer.get(gid) is cell:
                cells.append(_clean_answer(cell, stubs.get(gid), by_id[gid]))
                placed.add(gid)
        else:
            if gid is not None:  # an id the course does not have: the student's own cell now
                out.notes.append(f"cell tagged {gid!r} is not part of the course: run as the student's own code")
                if _meta(cell).get("grade"):
                    out.tampered_tests.append(gid)
            cells.append(_student_cell(cell))

    # Put back what the student deleted, after the source cell that preceded it.
    for i, original in enumerate(src_cells):
        gid = grade_id(original)
        if gid is None or gid in placed:
            continue
        if gid in answers:
            out.answers_missing.append(gid)
            out.notes.append(f"answer cell {gid} was deleted: the release's stub is graded")
            # Never the source's cell: that holds the solution.
            restored = copy.deepcopy(stubs[gid]) if gid in stubs else _clean_answer(nbformat.v4.new_code_cell(STUB), None, original)
        else:
            restored = copy.deepcopy(original)
            if gid in tests:
                out.tampered_tests.append(gid)
                out.notes.append(f"test cell {gid} was deleted: put back")
        anchor = next((grade_id(c) for c in reversed(src_cells[:i]) if grade_id(c) in placed), None)
        at = 0 if anchor is None else next((k + 1 for k, c in enumerate(cells) if grade_id(c) == anchor), len(cells))
        cells.insert(at, restored)
        placed.add(gid)

    # The source's first code cell (the checkers' import) runs before any student code.
    first_code = next((c for c in src_cells if c.cell_type == "code"), None)
    if first_code is not None and grade_id(first_code) in locked:
        k = next(k for k, c in enumerate(cells) if grade_id(c) == grade_id(first_code))
        code_before = [c for c in cells[:k] if c.cell_type == "code" and c.source.strip()]
        if code_before:
            out.notes.append(f"{len(code_before)} code cell(s) above the import cell: the import cell runs first")
        cells.insert(0, cells.pop(k))
    out.notebook.cells = cells
    _alias_checker_entry(out.notebook, tests)
    return out


CHECKER_ENTRY = "load_checks"


def _alias_checker_entry(nb: NotebookNode, tests: set[str]) -> None:
    """Test cells call the checkers through `load_checks`, a global a student cell could rebind.
    In the graded run they call it by a name made up for this run, bound in the import cell
    (which runs before any student code), so no answer can replace the checkers."""
    import re
    import secrets

    first_code = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first_code is None or CHECKER_ENTRY not in first_code.source:
        return
    alias = f"_grader_checks_{secrets.token_hex(6)}"
    pattern = re.compile(rf"\b{CHECKER_ENTRY}\b")
    first_code.source += f"\n{alias} = {CHECKER_ENTRY}  # added by the grader"
    for cell in nb.cells:
        if grade_id(cell) in tests:
            cell.source = pattern.sub(alias, cell.source)


def _clean_answer(cell, stub, original) -> NotebookNode:
    """An answer cell as the course defines it (the release's, else the source's metadata, never
    its solution), holding the student's code."""
    if stub is not None:
        fresh = copy.deepcopy(stub)
    else:
        fresh = nbformat.v4.new_code_cell()
        fresh.metadata["nbgrader"] = copy.deepcopy(_meta(original))
    fresh.source = cell.source
    fresh.outputs, fresh.execution_count = [], None
    return fresh


def _student_cell(cell) -> NotebookNode:
    """A cell of the student's own, without any nbgrader metadata (it cannot carry points)."""
    if cell.cell_type == "code":
        fresh = nbformat.v4.new_code_cell(cell.source)
    elif cell.cell_type == "markdown":
        fresh = nbformat.v4.new_markdown_cell(cell.source)
    else:
        fresh = nbformat.v4.new_raw_cell(cell.source)
    return fresh
