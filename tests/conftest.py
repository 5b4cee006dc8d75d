"""Shared fixtures. The whole suite runs with sockets disabled (see pyproject addopts)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def course_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def toy2():
    from course_lib.models import load_toy

    return load_toy("attn-only-2l")


@pytest.fixture(scope="session")
def toy1():
    from course_lib.models import load_toy

    return load_toy("attn-only-1l")


@pytest.fixture(scope="session")
def smollm2():
    """The offline SmolLM2 from the user cache (built on first use)."""
    from course_lib.models import load_model

    torch.set_grad_enabled(True)
    return load_model()


def solution_functions(notebook_name: str, extra: dict | None = None):
    """Execute the answer cells of a solution notebook and return what they define, so the
    checkers are tested against the very code the notebook ships as its solution. `extra` adds
    names the answer cells use from the notebook's imports."""
    import itertools
    import math
    import types

    import nbformat
    import numpy as np

    path = ROOT / "solutions" / "mech_interp" / notebook_name
    namespace = {"torch": torch, "math": math, "np": np, "itertools": itertools, **(extra or {})}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            exec(compile(cell.source, f"<{path.name} answer cell>", "exec"), namespace)
    return types.SimpleNamespace(**namespace)
