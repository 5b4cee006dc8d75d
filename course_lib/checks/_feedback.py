"""Short feedback for a failed check in Jupyter: the checker's message, not the checker's stack.

A checker reports a failure by raising AssertionError. IPython would print the whole traceback,
through the checker and `_trust`, ending in the one line the student needs. This module registers
an IPython handler for AssertionError that prints, for a failure raised inside a checker, only
that message (and, when the student's own function raised, the traceback of the student's code).
Any other AssertionError gets IPython's usual traceback.

The cell still ends in an error output, as before: the kernel reports the cell as failed, Run All
treats it as failed, and nbgrader scores it zero. Only what is printed changes.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

_CHECKS_DIR = str(Path(__file__).resolve().parent)
_RED, _RESET = "\x1b[31m", "\x1b[0m"


def raised_by_a_checker(tb: TracebackType | None) -> bool:
    """True when the exception was raised by checker code (its innermost frame is in course_lib/checks).

    An `assert` in the student's own function, even one called by a checker, is the student's
    to debug: it keeps the usual traceback.
    """
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(_CHECKS_DIR)


def check_failure_lines(shell, value: BaseException) -> list[str]:
    """What a student sees for a failed check: their own traceback, if any, then the message."""
    lines: list[str] = []
    cause = value.__cause__
    # call_student chains the student's exception as the cause; its traceback starts in
    # call_student, so the student's frames begin one step further down.
    student_tb = cause.__traceback__.tb_next if cause is not None and cause.__traceback__ is not None else None
    if student_tb is not None:
        lines += shell.InteractiveTB.structured_traceback(type(cause), cause, student_tb)
        lines.append("\nThe check failed because your function raised the error above.")
    lines.append(f"{_RED}\u2718 Check failed:{_RESET} {value}")
    return lines


def _show_short_failure(shell, etype, value, tb, tb_offset=None) -> list[str]:
    if raised_by_a_checker(tb):
        stb = check_failure_lines(shell, value)
    else:
        stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
    shell._showtraceback(etype, value, stb)  # publishes the error output, as showtraceback would
    return stb


def install_short_check_failures() -> bool:
    """Register the handler in the running IPython shell; False (and nothing done) outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    shell.set_custom_exc((AssertionError,), _show_short_failure)
    return True
