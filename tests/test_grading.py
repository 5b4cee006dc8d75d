"""The grading chain end to end: release in sync, self-check, a hostile class graded in one call."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib import cli
from course_lib.grading import autograde_class, export_grades, integrity_file, release

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "mech_interp"

# Jupyter kernels talk to the grader over loopback TCP: these tests may open sockets to this
# machine only, and the kernels they start run with the Hugging Face hub switched off.


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_release_notebooks_are_up_to_date(tmp_path):
    """notebooks/ must equal a fresh release of solutions/: run `course release` after editing."""
    fresh = release(ROOT, release_dir=tmp_path)
    assert fresh, "no notebooks released"
    for nb in fresh:
        committed = ROOT / "notebooks" / nb.parent.name / nb.name
        assert committed.exists(), f"{committed} is missing: run `course release`"
        assert committed.read_text() == nb.read_text(), f"{committed} is out of date: run `course release`"


def test_release_has_stubs_and_no_solutions_or_hidden_tests():
    for nb_path in sorted((ROOT / "notebooks").glob("*/*.ipynb")):
        text = nb_path.read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
        nb = nbformat.read(nb_path, as_version=4)
        answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert answers and all("raise NotImplementedError()" in c.source for c in answers)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert nb.metadata.kernelspec.name == "python3"


def test_run_all_goes_past_a_failing_test_and_hidden_tests_print_nothing():
    """Test cells carry `raises-exception`, so Run All in JupyterLab goes on past a failing check.

    Grading is as strict as before (nbgrader scores a cell with an error output as failed, tag or
    not); only the test cells carry the tag, so a crash anywhere else still stops Run All. In the
    release a hidden-test cell holds only a comment, so it shows no output.
    """
    for nb_path in sorted((ROOT / "solutions").glob("*/*.ipynb")) + sorted((ROOT / "notebooks").glob("*/*.ipynb")):
        for cell in nbformat.read(nb_path, as_version=4).cells:
            graded = cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade", False)
            tagged = "raises-exception" in cell.metadata.get("tags", [])
            assert graded == tagged, f"{nb_path.name}: {cell.source[:60]!r} graded={graded} tagged={tagged}"
            if graded and nb_path.is_relative_to(ROOT / "notebooks") and "hidden" in cell.metadata.nbgrader.grade_id:
                assert all(line.startswith("#") for line in cell.source.splitlines()), cell.source


def _course_copy(tmp_path: Path) -> Path:
    root = tmp_path / "course"
    for name in ("solutions", "notebooks"):
        shutil.copytree(ROOT / name, root / name)
    shutil.copy(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    return root


def _edit_answer(nb_path: Path, grade_id: str, new_source: str, out: Path) -> None:
    nb = nbformat.read(nb_path, as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    cell.source = new_source
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)


@pytest.mark.slow
@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1", "::1", "localhost"])
def test_self_check_of_the_unmodified_release(capfd):
    assert cli.main(["check", str(ROOT / "notebooks" / ASSIGNMENT / "00_setup.ipynb")]) == 1
    out, err = capfd.readouterr()
    assert "as saved on disk" in out and "save first" in out  # the learner knows what was graded
    assert "0 / 6 points" in out and "not implemented yet" in out
    assert "Left to do: test_resid_after_layer" in out
    assert "without encryption" not in out + err, "the kernel's TCP warning is noise to a learner"


@pytest.mark.slow
@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1", "::1", "localhost"])
def test_a_hostile_class_is_graded_in_one_call(tmp_path):
    root = _course_copy(tmp_path)
    release(root)
    solution = root / "solutions" / ASSIGNMENT / "00_setup.ipynb"
    student_nb = root / "notebooks" / ASSIGNMENT / "00_setup.ipynb"
    sub = lambda student: root / "submitted" / student / ASSIGNMENT / "00_setup.ipynb"

    # A solution notebook: full marks. One is enough here: the browser tests (`make test-browser`)
    # run every solution notebook, hidden tests included, and score each test cell by nbgrader's rule.
    sub("alice").parent.mkdir(parents=True)
    shutil.copy(solution, sub("alice"))
    # The release untouched: zero, runs to the end. One notebook is enough here; the browser tests
    # (`make test-browser`) run every released notebook to its last cell and see every test fail.
    sub("bob").parent.mkdir(parents=True)
    shutil.copy(student_nb, sub("bob"))
    _edit_answer(  # rebinds the checker and calls the reference: no points, flagged
        student_nb, "resid_after_layer",
        "import course_lib.checks, course_lib.activations\n"
        "course_lib.checks.load_checks = lambda nb: type('C', (), {'check_resid_after_layer': staticmethod(lambda f, hidden=False: None)})\n"
        "def resid_after_layer(model, tokens, layer):\n"
        "    return course_lib.activations.resid_after_layer(model, tokens, layer)\n",
        sub("carol"),
    )
    _edit_answer(student_nb, "resid_after_layer", "while True:\n    pass\n", sub("dave"))  # hangs
    sub("eve").parent.mkdir(parents=True)
    sub("eve").write_text("{ this is not a notebook")  # broken file

    status = autograde_class(root, ASSIGNMENT, students=["alice", "bob", "carol", "eve"])
    status |= autograde_class(root, ASSIGNMENT, timeout_s=45, students=["dave"])  # a short limit for the hang
    assert set(status) == {"alice", "bob", "carol", "dave", "eve"}
    assert status["alice"] == "ok" and status["bob"] == "ok"
    assert "timed out" in status["dave"]
    assert "integrity flags" in status["carol"]

    rows = {r["student"]: r for r in csv.DictReader(export_grades(root, ASSIGNMENT, root / "grades.csv").open())}
    assert set(rows) == {"alice", "bob", "carol", "dave", "eve"}, "every submission gets a row"
    assert float(rows["alice"]["00_setup"]) == 6.0
    assert float(rows["bob"]["total"]) == 0.0
    assert float(rows["carol"]["00_setup:test_resid_after_layer"]) == 0.0
    assert float(rows["carol"]["00_setup:test_resid_after_layer_hidden"]) == 0.0
    assert int(rows["carol"]["integrity_flags"]) >= 1
    assert float(rows["dave"]["total"]) == 0.0 and "timed out" in rows["dave"]["status"]
    assert float(rows["eve"]["total"]) == 0.0

    # The untouched release ran to the end: errors only in test cells.
    graded_notebooks = sorted((root / "autograded" / "bob" / ASSIGNMENT).glob("*.ipynb"))
    assert [p.name for p in graded_notebooks] == ["00_setup.ipynb"]
    for path in graded_notebooks:
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if not meta.get("grade"):
                assert not errors, f"{path.name}: release crashed outside a test cell: {cell.source[:80]!r}"
    assert (root / "feedback" / "alice" / ASSIGNMENT / "00_setup.html").exists()
    flags = json.loads(integrity_file(root, ASSIGNMENT, "carol").read_text())
    assert any("course_lib" in f["reason"] for f in flags)
    assert not list((root / "feedback").rglob("*.json")), "integrity flags are for the instructor, not in feedback"
