"""A tiny course and a class of hostile and broken submissions, built by the tests themselves.

The tiny assignment has no torch in it, so a kernel runs it in a second or two: the grading
chain's handling of every kind of bad submission is tested here in seconds; the real notebooks'
checkers are tested against tampering in tests/test_grading.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat

TINY = "tiny"


def _cell(kind: str, source: str, grade_id: str | None = None, *, grade=False, solution=False, locked=False,
          points=0, tags=()):
    cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    if grade_id:
        cell.metadata["nbgrader"] = {"grade_id": grade_id, "grade": grade, "solution": solution, "locked": locked,
                                     "schema_version": 3}
        if grade:
            cell.metadata["nbgrader"]["points"] = points
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def tiny_source() -> nbformat.NotebookNode:
    """01_tiny: two exercises (add: 1 + 1 hidden point; mul: 2 points) and a demonstration cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    test = dict(grade=True, locked=True, tags=("raises-exception",))
    nb.cells = [
        _cell("markdown", "# Tiny", "intro", locked=True),
        _cell("code", "import math", "imports", locked=True),
        _cell("code", "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION", "add", solution=True),
        _cell("code", 'assert add(1, 2) == 3, "add(1, 2) should be 3"', "test_add", points=1, **test),
        _cell("code", '"""Hidden test of add."""\n### BEGIN HIDDEN TESTS\nassert add(-5, 5) == 0, "add(-5, 5) should be 0"\n'
              "### END HIDDEN TESTS", "test_add_hidden", points=1, **test),
        _cell("code", "print(add(2, 2))", tags=("demo",)),
        _cell("code", "OFFSET = 0  # a demo that binds a name", tags=("demo",)),
        _cell("code", "def mul(a, b):\n    ### BEGIN SOLUTION\n    return a * b\n    ### END SOLUTION", "mul", solution=True),
        _cell("code", 'assert mul(3, 4) == 12, "mul(3, 4) should be 12"', "test_mul", points=2, **test),
    ]
    return nb


def tiny_second() -> nbformat.NotebookNode:
    """02_second: one exercise (neg: 1 point)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        _cell("code", "import math", "imports2", locked=True),
        _cell("code", "def neg(a):\n    ### BEGIN SOLUTION\n    return -a\n    ### END SOLUTION", "neg", solution=True),
        _cell("code", 'assert neg(2) == -2, "neg(2) should be -2"', "test_neg", grade=True, locked=True, points=1,
              tags=("raises-exception",)),
    ]
    return nb


def make_tiny_course(root: Path) -> Path:
    """A course folder with the tiny assignment in solutions/ and its release in notebooks/."""
    from course_lib.grading.course import release

    (root / "solutions" / TINY).mkdir(parents=True)
    nbformat.write(tiny_source(), root / "solutions" / TINY / "01_tiny.ipynb")
    nbformat.write(tiny_second(), root / "solutions" / TINY / "02_second.ipynb")
    (root / "nbgrader_config.py").write_text("c = get_config()\n")
    release(root, TINY)
    return root


def _by_id(nb, gid):
    return next(c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == gid)


def _answer(nb, gid, source):
    _by_id(nb, gid).source = source
    return nb


CORRECT_ADD = "def add(a, b):\n    return a + b"
CORRECT_MUL = "def mul(a, b):\n    return a * b"


def tiny_class(root: Path) -> dict[str, object]:
    """student -> the 01_tiny submission (a notebook, or raw bytes for broken files)."""
    release = nbformat.read(root / "notebooks" / TINY / "01_tiny.ipynb", as_version=4)

    def solved(add=CORRECT_ADD, mul=CORRECT_MUL):
        nb = copy.deepcopy(release)
        _answer(nb, "add", add)
        _answer(nb, "mul", mul)
        return nb

    gradebook = str(root / "gradebook.db")
    subs: dict[str, object] = {
        "correct": solved(),
        "blank": copy.deepcopy(release),
        "wrong": solved(add="def add(a, b):\n    return a - b"),
        "raises": solved(add="def add(a, b):\n    raise ValueError('boom')"),
        "loop": solved(add="while True:\n    pass"),
        "sigint": solved(add="import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"),
        "asks_input": solved(add="def add(a, b):\n    return int(input('a + b = '))"),
        "exits": solved(add="import os\nos._exit(1)"),
        "segfault": solved(add="import ctypes\nctypes.string_at(0)"),
        "memory": solved(add="def add(a, b):\n    block = bytearray(12 * 2**30)\n    return a + b"),
        "huge_output": solved(add="print('x' * 20_000_000)\nfor i in range(200_000):\n    print(i)\n" + CORRECT_ADD),
        "writes_grading": solved(add=(
            "import course_lib, pathlib\n"
            "for target in [pathlib.Path(course_lib.__file__), pathlib.Path(" + repr(gradebook) + ")]:\n"
            "    try:\n        target.open('a').write('# hacked')\n    except OSError:\n        pass\n" + CORRECT_ADD)),
        "stderr": solved(add="import sys\ndef add(a, b):\n    print('debug', file=sys.stderr)\n    return a + b"),
        # nbgrader reads a displayed number as partial credit, before it looks for the error.
        "displayhook": solved(add="import sys\ndef add(a, b):\n    sys.displayhook(1.0)\n    return 7"),
        "displayhook_99": solved(add="import sys\ndef add(a, b):\n    sys.displayhook(99)\n    return 7"),
        # Output past the budget is dropped, but stderr (which fails a test) never is.
        "stderr_after_flood": solved(add="print('x' * 3_000_000)\nimport sys\n"
                                     "def add(a, b):\n    print('oops', file=sys.stderr)\n    return a + b"),
    }
    # Test cells: deleted, emptied, edited (to pass), re-tagged as an answer.
    nb = solved()
    nb.cells = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != "test_add"]
    subs["test_deleted"] = nb
    nb = solved(add="def add(a, b):\n    return 7")
    _by_id(nb, "test_add").source = ""
    subs["test_emptied"] = nb
    nb = solved(add="def add(a, b):\n    return 7")
    _by_id(nb, "test_add").source = "pass"
    _by_id(nb, "test_add_hidden").source = "pass"
    subs["test_edited"] = nb
    nb = solved(add="def add(a, b):\n    return 7")
    meta = _by_id(nb, "test_add").metadata.nbgrader
    meta.update(grade=False, solution=True, locked=False)
    _by_id(nb, "test_add").source = "pass"
    subs["test_retagged"] = nb
    # Answer cells: deleted, duplicated (the stub first, the answer second).
    nb = solved()
    nb.cells = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") != "add"]
    subs["answer_deleted"] = nb
    nb = copy.deepcopy(release)
    stub = copy.deepcopy(_by_id(nb, "add"))
    _answer(nb, "add", CORRECT_ADD)
    _answer(nb, "mul", CORRECT_MUL)
    nb.cells.insert(nb.cells.index(_by_id(nb, "add")), stub)
    subs["answer_duplicated"] = nb
    nb = solved()
    nb.metadata["kernelspec"] = {"name": "evil", "display_name": "evil", "language": "python"}
    subs["kernelspec"] = nb
    nb = solved()
    nb.metadata["kernelspec"] = "python3"  # not even a dict
    subs["kernelspec_string"] = nb
    raw = json.loads(nbformat.writes(solved()))
    next(c for c in raw["cells"] if c["cell_type"] == "code" and "demo" in c["metadata"].get("tags", [])).pop("source")
    subs["no_source"] = json.dumps(raw).encode()  # a cell without its source field
    subs["invalid_json"] = b'{"cells": [ this is not json'
    subs["empty_file"] = b""
    return subs


# What each student of tiny_class must score on 01_tiny (out of 4), and a word of the reason
# for their lost points (None: no points lost).
EXPECTED = {
    "correct": (4, None),
    "blank": (0, "NotImplementedError"),
    "wrong": (2, "add(1, 2) should be 3"),
    "raises": (2, "ValueError: boom"),
    "loop": (2, "timed out"),
    "sigint": (0, "did not stop when interrupted"),
    "asks_input": (2, "input()"),
    "exits": (0, "kernel died"),
    "segfault": (0, "kernel died"),
    "memory": (2, "MemoryError"),
    "huge_output": (4, None),
    "writes_grading": (4, None),
    "stderr": (2, "stderr"),
    "test_deleted": (4, None),
    "test_emptied": (2, "add(1, 2) should be 3"),
    "test_edited": (2, "add(1, 2) should be 3"),
    "test_retagged": (2, "add(1, 2) should be 3"),
    "answer_deleted": (2, "answer cell deleted"),
    "answer_duplicated": (4, None),
    "kernelspec": (4, None),
    "kernelspec_string": (4, None),
    "displayhook": (2, "add(1, 2) should be 3"),
    "displayhook_99": (2, "add(1, 2) should be 3"),
    "stderr_after_flood": (2, "stderr"),
    "no_source": (4, None),
    "invalid_json": (0, "not valid notebook JSON"),
    "empty_file": (0, "empty"),
}


def write_class(subs: dict[str, object], folder: Path, assignment: str = TINY, name: str = "01_tiny.ipynb") -> Path:
    """Write submissions in nbgrader's layout: folder/<student>/<assignment>/<name>."""
    for student, sub in subs.items():
        path = folder / student / assignment / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(sub, bytes):
            path.write_bytes(sub)
        else:
            nbformat.write(sub, path)
    return folder


def rows_by_student(csv_path: Path) -> dict[str, dict[str, list[dict]]]:
    """grades.csv read back: student -> notebook -> its rows."""
    import csv

    out: dict[str, dict[str, list[dict]]] = {}
    with Path(csv_path).open() as f:
        for row in csv.DictReader(f):
            out.setdefault(row["student"], {}).setdefault(row["notebook"], []).append(row)
    return out

