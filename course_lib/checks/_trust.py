"""Trusted primitives for the exercise checkers, captured when this module is first imported.

A checker runs inside the student's kernel, where any module can be monkeypatched. The first
code cell of every notebook imports `course_lib.checks`, and when the autograder runs a notebook
top to bottom that cell runs before any student code. So everything this module captures at
import is the genuine article:

* comparison primitives from torch (the student may later rebind `torch.allclose`, `torch.testing`
  or numpy: the checkers never look those names up again);
* private copies of the reference modules, executed from the package's files on disk under
  private names (`_course_private.*`), so rebinding `course_lib.lens.logit_lens` changes nothing here;
* `sys.setprofile`, used to notice a student function that calls the reference implementation.

This does not make a kernel tamper-proof (nothing in Python can); the grading command adds an
out-of-kernel scan of the submitted code (`course_lib.integrity`) that flags tampering attempts.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path
from typing import Any, Callable

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent.parent

# Captured once; checkers use these names only.
_is_tensor = torch.is_tensor
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_isclose = torch.isclose
_isfinite = torch.isfinite
_detach = torch.Tensor.detach
_to = torch.Tensor.to
_as_tensor = torch.as_tensor
_float64 = torch.float64
_no_grad = torch.no_grad
_sys_modules = sys.modules
_setprofile = sys.setprofile
_getprofile = sys.getprofile
_spec_from_file_location = importlib.util.spec_from_file_location
_module_from_spec = importlib.util.module_from_spec
_isfinite_float = math.isfinite

_private_modules: dict[str, types.ModuleType] = {}
_private_models: dict[str, Any] = {}


def private_module(dotted_name: str) -> types.ModuleType:
    """A private copy of `course_lib.<dotted_name>`, executed from its file, cached per kernel."""
    if dotted_name not in _private_modules:
        path = _PACKAGE_DIR.joinpath(*dotted_name.split(".")).with_suffix(".py")
        spec = _spec_from_file_location(f"_course_private.{dotted_name}", path)
        module = _module_from_spec(spec)
        # Registered under a private name only: dataclasses and pickling look modules up there.
        _sys_modules[spec.name] = module
        spec.loader.exec_module(module)
        _private_modules[dotted_name] = module
    return _private_modules[dotted_name]


def private_toy(name: str):
    """A fresh toy model loaded from the shipped file (cheap: a new instance every call)."""
    toy = private_module("models.toy")
    return toy.load_toy_from_file(toy.CHECKPOINT_DIR / f"{name}.safetensors")


def private_pretrained():
    """The checker's own SmolLM2 instance, loaded once per kernel from the cache."""
    if "smollm2" not in _private_models:
        _private_models["smollm2"] = private_module("models.pretrained").load_model()
    model = _private_models["smollm2"]
    model.reset_hooks(including_permanent=True)
    return model


def reference_code_ids(functions: list[Callable]) -> set[tuple[str, str]]:
    """(file, qualified name) of each reference function: how a call into it is recognised."""
    return {(str(Path(f.__code__.co_filename).resolve()), f.__code__.co_qualname) for f in functions}


class ReferenceCallError(AssertionError):
    """The student's function called the reference implementation it was meant to replace."""


def call_student(
    fn: Callable, args: tuple, forbidden: set[tuple[str, str]], name: str, expect_error: type | None = None
) -> Any:
    """Call fn(*args); fail if it calls a forbidden reference function or raises.

    With `expect_error`, the call must raise that exception type instead; it is returned.
    """
    seen: list[str] = []
    resolved: dict[str, str] = {}

    def profiler(frame, event, arg):
        if event == "call":
            code = frame.f_code
            filename = resolved.get(code.co_filename)
            if filename is None:
                filename = resolved[code.co_filename] = str(Path(code.co_filename).resolve())
            if (filename, code.co_qualname) in forbidden:
                seen.append(code.co_qualname)

    previous = _getprofile()
    _setprofile(profiler)
    try:
        with _no_grad():
            result = fn(*args)
    except NotImplementedError:
        raise AssertionError(
            f"{name} is not implemented yet: it still raises NotImplementedError. "
            "Replace the `raise NotImplementedError()` line with your code."
        ) from None
    except AssertionError:
        raise
    except Exception as err:
        if expect_error is not None and isinstance(err, expect_error):
            result = err
        else:
            raise AssertionError(
                f"{name} raised {type(err).__name__}: {err}\n(on input {describe_args(args)})"
            ) from err
    finally:
        _setprofile(previous)
    if seen:
        raise ReferenceCallError(
            f"{name} calls the course's reference implementation ({seen[0]}). "
            "Write the computation yourself; the point is to see how it works."
        )
    if expect_error is not None and not isinstance(result, expect_error):
        raise AssertionError(
            f"{name} should raise {expect_error.__name__} on input {describe_args(args)}, "
            f"but it returned {describe_args((result,))}."
        )
    return result


def describe_args(args: tuple) -> str:
    """A short description of call arguments for feedback messages."""
    parts = []
    for a in args:
        if _is_tensor(a):
            parts.append(f"tensor{tuple(a.shape)}")
        elif hasattr(a, "cfg") and hasattr(a.cfg, "n_layers"):
            parts.append(f"<model with {a.cfg.n_layers} layers>")
        elif isinstance(a, str):
            parts.append(repr(a))
        else:
            text = repr(a)
            parts.append(text if len(text) < 40 else text[:37] + "...")
    return ", ".join(parts)


def _require_plain_tensor(actual: Any, name: str, ctx: str) -> None:
    """A tensor subclass can redefine every operation on itself (`__torch_function__`), comparisons
    included: only torch.Tensor and nn.Parameter are compared."""
    if not any(type(actual) is plain for plain in _PLAIN_TENSOR_TYPES):
        raise AssertionError(
            f"{name} should return a plain torch.Tensor{ctx}, got a {type(actual).__name__} (a tensor subclass)."
        )


def assert_tensor_close(
    actual: Any, expected: "torch.Tensor", name: str, atol: float = 1e-4, rtol: float = 1e-4, where: str = ""
) -> None:
    """Check type, shape and values; the message says what differs, where, and by how much."""
    ctx = f" ({where})" if where else ""
    if not _is_tensor(actual):
        raise AssertionError(f"{name} should return a torch.Tensor{ctx}, got {type(actual).__name__}.")
    _require_plain_tensor(actual, name, ctx)
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(
            f"{name} returned shape {tuple(actual.shape)}, expected {tuple(expected.shape)}{ctx}."
        )
    a = _to(_detach(actual), _float64)
    e = _to(_detach(expected), _float64)
    if not bool(_isfinite(a).all()):
        raise AssertionError(f"{name} returned NaN or infinite values{ctx}.")
    close = _isclose(a, e, rtol=rtol, atol=atol)
    if not bool(close.all()):
        bad = (~close).nonzero()[0].tolist()
        n_bad = int((~close).sum())
        raise AssertionError(
            f"{name} returned wrong values{ctx}: {n_bad} of {e.numel()} entries differ. "
            f"First at index {tuple(bad)}: got {float(a[tuple(bad)]):.6g}, expected {float(e[tuple(bad)]):.6g}."
        )


def assert_float_close(actual: Any, expected: float, name: str, atol: float = 1e-5, rtol: float = 1e-4, where: str = "") -> float:
    """Check a scalar result (a Python number or a one-element tensor); returns it as a float."""
    ctx = f" ({where})" if where else ""
    if _is_tensor(actual):
        _require_plain_tensor(actual, name, ctx)
        if actual.numel() != 1:
            raise AssertionError(f"{name} should return one number{ctx}, got a tensor of shape {tuple(actual.shape)}.")
        actual = float(actual.item())
    if isinstance(actual, bool) or not isinstance(actual, (int, float)):
        raise AssertionError(f"{name} should return a number{ctx}, got {type(actual).__name__}.")
    actual = float(actual)
    if not _isfinite_float(actual):
        raise AssertionError(f"{name} returned {actual}{ctx}.")
    if abs(actual - expected) > atol + rtol * abs(expected):
        raise AssertionError(f"{name} returned {actual:.6g}, expected {expected:.6g}{ctx}.")
    return actual


def passed(name: str, n_cases: int, hidden: bool) -> None:
    """Print the success line a student sees under a test cell."""
    kind = "hidden" if hidden else "visible"
    print(f"\u2714 {name}: all {n_cases} {kind} test cases pass.")


def tensors_match(actual: Any, candidate: "torch.Tensor", atol: float = 1e-3, rtol: float = 1e-3) -> bool:
    """True when `actual` is a tensor of the candidate's shape and values (used to name mistakes)."""
    return (
        _is_tensor(actual)
        and tuple(actual.shape) == tuple(candidate.shape)
        and bool(_isclose(_to(_detach(actual), _float64), _to(_detach(candidate), _float64), atol=atol, rtol=rtol).all())
    )


def safe_float(value: Any) -> float:
    """The student's scalar as a float, NaN when it is not one (only used to look for hints)."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return float("nan")
