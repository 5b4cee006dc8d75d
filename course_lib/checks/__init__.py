"""Exercise checkers, one module per notebook: `load_checks("00_setup").check_<exercise>(fn)`.

Importing this package captures the trusted primitives the checkers rely on (see `_trust`) and, in
Jupyter, makes a failed check print its message rather than the checker's stack (see `_feedback`).
`load_checks` executes the notebook's checker module afresh from its file on every call, so a
student who rebinds a checker function in the notebook does not change what the test cells run.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
import warnings

from course_lib.checks import _feedback, _trust

_feedback.install_short_check_failures()  # in Jupyter: a failed check prints its message, not a stack

NOTEBOOK_CHECKS = {
    "00_setup": "checks.nb00_setup",
    "01_recap": "checks.nb01_recap",
    "02_early_decoding": "checks.nb02_early_decoding",
    "03_residual_stream": "checks.nb03_residual_stream",
    "04_activation_patching": "checks.nb04_activation_patching",
    "05_circuit_analysis": "checks.nb05_circuit_analysis",
}


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"Warning (it does not change your grade): {category.__name__}: {message}")


@contextlib.contextmanager
def _stderr_to_stdout():
    """While a check runs, warnings and anything written to stderr go to stdout instead.

    nbgrader scores a test cell with *any* stderr output as failed, so a correct function that
    merely warns (say, `torch.tensor(a_tensor)`) would lose its points. The student still sees
    the warning, as ordinary output.
    """
    with contextlib.redirect_stderr(sys.stdout), warnings.catch_warnings():
        warnings.showwarning = _print_warning
        yield


def _stdout_only(check):
    @functools.wraps(check)
    def run(*args, **kwargs):
        with _stderr_to_stdout():
            return check(*args, **kwargs)
    return run


def load_checks(notebook: str) -> types.ModuleType:
    """A fresh copy of the checker module for `notebook` (e.g. "00_setup")."""
    if notebook not in NOTEBOOK_CHECKS:
        raise KeyError(f"No checks for notebook {notebook!r}; known: {sorted(NOTEBOOK_CHECKS)}.")
    dotted = NOTEBOOK_CHECKS[notebook]
    _trust._private_modules.pop(dotted, None)  # re-executed from disk on every load
    with _stderr_to_stdout():
        module = _trust.private_module(dotted)
    for name in [n for n in vars(module) if n.startswith("check_") and callable(vars(module)[n])]:
        setattr(module, name, _stdout_only(getattr(module, name)))
    return module


__all__ = ["load_checks", "NOTEBOOK_CHECKS"]
