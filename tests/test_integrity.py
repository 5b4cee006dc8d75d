"""The out-of-kernel scan flags tampering and leaves honest code alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from course_lib.integrity import scan_notebook, scan_source

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "source",
    [
        "import course_lib.checks\ncourse_lib.checks.load_checks = lambda nb: None",
        "import torch\ntorch.allclose = lambda *a, **k: True",
        "import numpy as np\nnp.testing.assert_allclose = print",
        "setattr(mod, 'check_resid_after_layer', lambda f: None)",
        "import sys\nsys.modules['course_lib.checks'] = object()",
        "f.__code__ = g.__code__",
        "from course_lib.checks import _trust",
        "exec('x = 1')",
        "import sys\nsys.setprofile(None)",
        "get_ipython().set_custom_exc((AssertionError,), lambda *a, **k: [])",
        "ip = get_ipython()\nip.events.register('post_run_cell', clear)",
    ],
)
def test_tampering_is_flagged(source):
    assert scan_source(source), f"not flagged: {source!r}"


@pytest.mark.parametrize(
    "source",
    [
        "def f(model, tokens, layer):\n    _, cache = model.run_with_cache(tokens)\n    return cache['blocks.0.hook_resid_post']",
        "import torch\nx = torch.zeros(3)\nx[0] = 1.0\nresult = x.softmax(-1)",
        "%matplotlib inline",  # IPython magic: not Python, not flagged
    ],
)
def test_honest_code_is_not_flagged(source):
    assert scan_source(source) == []


def test_solution_notebooks_are_clean():
    for nb in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        assert scan_notebook(nb) == [], nb.name


def test_unreadable_notebook_is_reported(tmp_path):
    bad = tmp_path / "00_setup.ipynb"
    bad.write_text("{not json")
    assert scan_notebook(bad)[0].reason == "not a readable notebook"
