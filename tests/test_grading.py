"""The grading chain end to end: release in sync, self-check, a hostile class graded in one call."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib import cli
from course_lib.grading import release
from course_lib.grading.pipeline import autograde

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
def test_tampering_with_the_real_checkers_earns_nothing(tmp_path):
    """00_setup's checkers under attack from answer cells, graded as a class (two jobs).

    The tiny-course tests (test_grading_pipeline.py) cover broken and hostile notebooks in
    general; this one covers what needs the real checkers: monkeypatching them, torch or numpy,
    and calling the reference implementation.
    """
    root = _course_copy(tmp_path)
    release(root)
    solution = root / "solutions" / ASSIGNMENT / "00_setup.ipynb"
    student_nb = root / "notebooks" / ASSIGNMENT / "00_setup.ipynb"
    sub = lambda student: root / "submitted" / student / ASSIGNMENT / "00_setup.ipynb"
    sub("alice").parent.mkdir(parents=True)
    shutil.copy(solution, sub("alice"))  # full marks (hidden tests included)
    sub("bob").parent.mkdir(parents=True)
    shutil.copy(student_nb, sub("bob"))  # the untouched release: zero
    # Carol and Dave solve exercise 2 honestly and attack exercise 1's checker.
    _edit_answer(  # rebinds the checker and calls the reference
        solution, "resid_after_layer",
        "import course_lib.checks, course_lib.activations\n"
        "course_lib.checks.load_checks = lambda nb: type('C', (), {'check_resid_after_layer': staticmethod(lambda f, hidden=False: None)})\n"
        "def resid_after_layer(model, tokens, layer):\n"
        "    return course_lib.activations.resid_after_layer(model, tokens, layer)\n",
        sub("carol"),
    )
    _edit_answer(  # makes every comparison pass
        solution, "resid_after_layer",
        "import torch, numpy\ntorch.allclose = lambda *a, **k: True\ntorch.testing.assert_close = lambda *a, **k: None\n"
        "numpy.allclose = lambda *a, **k: True\n"
        "def resid_after_layer(model, tokens, layer):\n    return torch.zeros(1)\n",
        sub("dave"),
    )
    _edit_answer(  # rebinds the global the test cells call, and returns a tensor that compares equal to anything
        solution, "resid_after_layer",
        "import torch\n"
        "load_checks = lambda nb: type('C', (), {'__getattr__': lambda self, name: (lambda *a, **k: None)})()\n"
        "class Always(torch.Tensor):\n"
        "    @classmethod\n"
        "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
        "        return torch.ones(1, dtype=torch.bool).expand(10**6)\n"
        "def resid_after_layer(model, tokens, layer):\n"
        "    return torch.zeros(1).as_subclass(Always)\n",
        sub("erin"),
    )
    run = autograde(root, root / "submitted", ASSIGNMENT, jobs=2, notebooks=["00_setup"], progress=False)
    rows = {}
    for row in csv.DictReader((root / "grades.csv").open()):
        if row["notebook"] == "00_setup":
            rows.setdefault(row["student"], {})[row["test"]] = row
    points = {s: sum(float(r["points"]) for r in tests.values()) for s, tests in rows.items()}
    assert points == {"alice": 6, "bob": 0, "carol": 4, "dave": 4, "erin": 4}, points
    for student in ("carol", "dave", "erin"):
        assert float(rows[student]["test_resid_after_layer"]["points"]) == 0
        assert float(rows[student]["test_resid_after_layer_hidden"]["points"]) == 0
    assert "reference" in rows["carol"]["test_resid_after_layer"]["reason"]
    assert "not implemented" in rows["bob"]["test_answer_probability"]["reason"]
    flagged = {g.student for g in run.grades if g.flags}
    assert flagged == {"carol", "dave"}, flagged  # erin's rebinding is plain code: it simply fails
    # The feedback page of the full-marks student names every test and shows no hidden test code.
    page = (root / "feedback" / "alice" / ASSIGNMENT / "00_setup.html").read_text()
    assert "6 / 6 points" in page and "BEGIN HIDDEN TESTS" not in page
