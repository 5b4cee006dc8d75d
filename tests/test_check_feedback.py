"""In Jupyter a failed check prints its message (and the student's own traceback), not the checker's stack."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

CELLS = [
    "import course_lib.checks\nfrom course_lib.checks import load_checks\nimport torch",
    # 1: not implemented yet
    "def logit_diff(logits, correct_id, incorrect_id):\n    raise NotImplementedError()\n"
    'load_checks("04_activation_patching").check_logit_diff(logit_diff)',
    # 2: the student's function crashes
    "def logit_diff(logits, correct_id, incorrect_id):\n    return helper(logits)\n"
    "def helper(logits):\n    return 1 / 0\n"
    'load_checks("04_activation_patching").check_logit_diff(logit_diff)',
    # 3: wrong values
    "def logit_diff(logits, correct_id, incorrect_id):\n    return logits[:, -1, correct_id].mean() * 0\n"
    'load_checks("04_activation_patching").check_logit_diff(logit_diff)',
    # 4: an AssertionError of the student's own, outside any checker
    "x = 1\nassert x == 2, 'my own assertion'",
    # 5: an assert in the student's own function, called by the checker
    "def logit_diff(logits, correct_id, incorrect_id):\n    assert logits.ndim == 2, 'expected 2-d logits'\n"
    'load_checks("04_activation_patching").check_logit_diff(logit_diff)',
    # 6: a correct function that warns (a common torch pattern): it must keep its points
    "import warnings\n"
    "def logit_diff(logits, correct_id, incorrect_id):\n"
    "    warnings.warn('a warning from the student')\n"
    "    last = logits[:, -1]\n"
    "    c = torch.as_tensor(correct_id).expand(last.shape[0])\n"
    "    i = torch.as_tensor(incorrect_id).expand(last.shape[0])\n"
    "    rows = torch.arange(last.shape[0])\n"
    "    return torch.tensor((last[rows, c] - last[rows, i]).mean())\n"
    'load_checks("04_activation_patching").check_logit_diff(logit_diff)',
    # 7: a passing check
    "def logit_diff(logits, correct_id, incorrect_id):\n"
    "    last = logits[:, -1]\n"
    "    c = torch.as_tensor(correct_id).expand(last.shape[0])\n"
    "    i = torch.as_tensor(incorrect_id).expand(last.shape[0])\n"
    "    rows = torch.arange(last.shape[0])\n"
    "    return (last[rows, c] - last[rows, i]).mean()\n"
    'load_checks("04_activation_patching").check_logit_diff(logit_diff)',
]


def _plain(lines: list[str]) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))


@pytest.fixture(scope="module")
def executed():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=120, allow_errors=True).execute()
    return nb.cells


def _error(cell) -> dict:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert len(errors) == 1, f"expected one error output, got {cell.outputs}"
    return errors[0]


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1", "::1", "localhost"])
def test_failed_checks_print_the_message_only(executed):
    for index in (1, 2, 3):
        err = _error(executed[index])
        assert err.ename == "AssertionError"  # still an error output: nbgrader scores the cell zero
        text = _plain(err.traceback)
        assert "\u2718 Check failed:" in text
        assert "_trust.py" not in text and "nb04_activation_patching.py" not in text, text
    assert "not implemented yet" in _plain(_error(executed[1]).traceback)
    assert "logit_diff returned 0, expected" in _plain(_error(executed[3]).traceback)


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1", "::1", "localhost"])
def test_the_students_own_traceback_is_kept(executed):
    text = _plain(_error(executed[2]).traceback)
    assert "ZeroDivisionError" in text and "return 1 / 0" in text and "return helper(logits)" in text
    assert text.index("ZeroDivisionError") < text.index("\u2718 Check failed:")


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1", "::1", "localhost"])
def test_the_students_own_assertions_keep_the_usual_traceback_and_passing_checks_print_success(executed):
    text = _plain(_error(executed[4]).traceback)
    assert "Check failed" not in text and "assert x == 2" in text and "my own assertion" in text
    text = _plain(_error(executed[5]).traceback)
    assert "Check failed" not in text and "expected 2-d logits" in text and "assert logits.ndim == 2" in text
    assert not [o for o in executed[7].outputs if o.output_type == "error"]
    assert "\u2714" in "".join(o.get("text", "") for o in executed[7].outputs)


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1", "::1", "localhost"])
def test_a_correct_function_that_warns_keeps_its_points(executed):
    """nbgrader scores any stderr output in a test cell as a failure: checks print warnings on stdout."""
    from nbgrader.utils import determine_grade

    cell = executed[6]
    assert not [o for o in cell.outputs if o.output_type == "error" or o.get("name") == "stderr"], cell.outputs
    stdout = "".join(o.get("text", "") for o in cell.outputs)
    assert "\u2714" in stdout and "a warning from the student" in stdout
    cell.metadata["nbgrader"] = {"grade": True, "grade_id": "t", "points": 1, "solution": False, "locked": True}
    assert determine_grade(cell) == (1, 1)
