"""Out-of-kernel scan of submitted notebooks for attempts to tamper with the grading.

The checkers defend themselves inside the kernel (see `course_lib.checks._trust`), but a kernel
can never be made tamper-proof. This scan reads the student's code cells as text, outside the
kernel, and flags what an honest solution never needs: rebinding attributes of course_lib, torch,
numpy or the standard library, touching `sys.modules`, profilers or code objects, `exec`/`eval`.
Flags are reported to the instructor (in `integrity.json` and the grades CSV); they do not change
a score on their own, since a rare flag can be innocent.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

# Roots whose attributes a student must not rebind.
PROTECTED_ROOTS = {
    "course_lib", "checks", "torch", "np", "numpy", "F", "nn", "sys", "builtins", "importlib",
    "transformer_lens", "math", "inspect", "types", "gc", "nbgrader", "T", "os",
}
# Words in a string that point at the grading's own files: an honest answer never opens them.
PROTECTED_PATH_WORDS = ("gradebook", "site-packages", "course_lib/", "solutions/", "nbgrader_config", "autograded/")
SUSPICIOUS_NAMES = {
    "setattr", "delattr", "exec", "eval", "compile", "__import__", "globals", "vars",
}
SUSPICIOUS_ATTRIBUTES = {
    "__code__", "__globals__", "__closure__", "cell_contents", "__builtins__", "__defaults__",
    "__kwdefaults__", "setprofile", "settrace", "modules", "_trust", "_private_modules",
    "_private_models", "reload", "_exit", "f_back", "f_globals", "f_locals",
    # IPython's error display: a handler that prints nothing would turn a failed test cell into
    # one with no error output, which nbgrader scores as passed.
    "set_custom_exc", "CustomTB", "custom_exceptions", "showtraceback", "_showtraceback",
    "InteractiveTB", "events",
    # IPython's input and AST transformers rewrite every later cell, test cells included.
    "input_transformers_cleanup", "input_transformers_post", "input_transformer_manager",
    "ast_transformers", "register_magic_function", "run_cell", "user_ns", "displayhook",
}


@dataclass
class Flag:
    """One suspicious construct in a submitted notebook."""

    notebook: str
    cell: int
    line: int
    code: str
    reason: str


def _as_python(source: str) -> str:
    """The cell as IPython runs it: magics and shell escapes become Python calls."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:
        return source


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def scan_source(source: str) -> list[tuple[int, str, str]]:
    """(line, code, reason) for each suspicious construct in one cell of Python source."""
    try:
        tree = ast.parse(_as_python(source))
    except SyntaxError:
        # Not Python even after IPython's own rewriting (magics): it cannot be scanned, so say so.
        return [(1, source.strip().splitlines()[0][:80] if source.strip() else "", "cannot be read as Python (not scanned)")]
    lines = source.splitlines()
    found = []

    def add(node: ast.AST, reason: str) -> None:
        line = getattr(node, "lineno", 1)
        found.append((line, lines[line - 1].strip() if line - 1 < len(lines) else "", reason))

    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(word in node.value for word in PROTECTED_PATH_WORDS):
                add(node, "names a file of the grading (gradebook, course package, solutions)")
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            if isinstance(target, (ast.Attribute, ast.Subscript)) and _root_name(target) in PROTECTED_ROOTS:
                add(node, f"rebinds something inside `{_root_name(target)}`")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in SUSPICIOUS_NAMES:
            add(node, f"calls `{node.func.id}`")
        if isinstance(node, ast.Attribute) and node.attr in SUSPICIOUS_ATTRIBUTES:
            add(node, f"uses `.{node.attr}`")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", None) or ""
            names = [alias.name for alias in node.names]
            if module.startswith("course_lib.checks") or any(n.startswith("course_lib.checks") for n in names) or "_trust" in names:
                add(node, "imports the checkers in an answer cell")
            if module in ("ctypes", "gc") or any(n in ("ctypes", "gc") for n in names):
                add(node, "imports a low-level module")
    return sorted(set(found))


def _is_student_cell(cell: dict) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if cell.get("cell_type") != "code":
        return False
    # Test cells and locked cells are restored from the source at autograde: only the rest counts.
    return not (meta.get("grade") and not meta.get("solution")) and not meta.get("locked")


def scan_notebook(path: Path) -> list[Flag]:
    """Flags for every student-editable code cell of one notebook."""
    path = Path(path)
    try:
        nb = json.loads(path.read_text())
        cells = nb["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return [Flag(path.name, -1, 0, "", "not a readable notebook")]
    return scan_cells(cells, path.name)


def scan_cells(cells: list, name: str) -> list[Flag]:
    """Flags for every student-editable code cell among `cells` (dicts, as in a notebook's JSON)."""
    flags = []
    path = Path(name)
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or not _is_student_cell(cell):
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        for line, code, reason in scan_source(source):
            flags.append(Flag(path.name, index, line, code, reason))
    return flags


def scan_submission(folder: Path) -> list[Flag]:
    """Flags for every notebook in one student's assignment folder."""
    return [flag for nb in sorted(Path(folder).glob("*.ipynb")) for flag in scan_notebook(nb)]
