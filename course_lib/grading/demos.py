"""Which demonstration cells a graded run can leave out without changing any grade.

Most of a notebook's run time goes to demonstrations (sweeps, figures, tuned-lens training) that
no test looks at. The author tags such cells `demo` in `solutions/`. A graded run skips a demo
cell when all of these hold:

* the student left it exactly as released (an edited cell is the student's code: it runs);
* no cell that runs after it reads a name it binds or reads (names are resolved with Python's own
  scoping rules, `symtable`: a function's parameters and locals are not globals), so neither its
  results nor any object it may have changed reach a test, an answer or a kept cell;
* no cell that runs reaches the namespace dynamically (`globals()`, `eval`, `exec`, `vars()`,
  `get_ipython()`, `sys.modules`, `__main__`, IPython magics), where names cannot be followed.

Imported modules and builtins are not counted as shared state. What that leaves unseen (a demo
drawing from a global random generator that a later student function also draws from without a
seed) is why the tests grade the same submissions both ways and compare (`--run-demos` runs
everything).
"""

from __future__ import annotations

import ast
import builtins
import symtable

from course_lib.grading.assemble import grade_id

DEMO_TAG = "demo"
SKIP_KEY = "course_grading_skip"  # cell metadata set on the assembled notebook (never by a student)
_DYNAMIC_NAMES = {"globals", "locals", "vars", "eval", "exec", "__import__", "get_ipython", "__builtins__"}
_DYNAMIC_ATTRIBUTES = {"modules", "user_ns", "f_globals", "f_locals", "__dict__", "__globals__"}
_BUILTINS = set(dir(builtins))


class Dynamic(Exception):
    """The cell reaches names in ways that cannot be followed statically."""


def names_of(source: str) -> tuple[set[str], set[str], set[str]]:
    """(bound, read, imported) global names of one cell; raises Dynamic where names cannot be followed."""
    if source.lstrip().startswith(("%", "!")) or "\n%" in source or "\n!" in source:
        raise Dynamic("IPython magic or shell command")
    try:
        tree = ast.parse(source)
        table = symtable.symtable(source, "<cell>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise Dynamic(f"not plain Python ({type(err).__name__})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _DYNAMIC_NAMES:
            raise Dynamic(f"uses {node.id}")
        if isinstance(node, ast.Attribute) and node.attr in _DYNAMIC_ATTRIBUTES:
            raise Dynamic(f"uses .{node.attr}")
        if isinstance(node, ast.Constant) and node.value == "__main__":
            raise Dynamic("names __main__")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(m.split(".")[0] in ("__main__", "builtins", "IPython") for m in modules):
                raise Dynamic("imports __main__, builtins or IPython")
    bound, read, imported = set(), set(), set()
    for symbol in table.get_symbols():
        name = symbol.get_name()
        if symbol.is_imported() and not symbol.is_assigned() and not symbol.is_namespace():
            imported.add(name)  # only ever bound by an import here
        if symbol.is_assigned() or symbol.is_imported() or symbol.is_namespace():
            bound.add(name)
        if symbol.is_referenced():
            read.add(name)

    def globals_of(child: symtable.SymbolTable) -> None:
        for symbol in child.get_symbols():
            if symbol.is_global() and symbol.is_referenced():
                read.add(symbol.get_name())
            if symbol.is_declared_global() and symbol.is_assigned():
                bound.add(symbol.get_name())
        for grandchild in child.get_children():
            globals_of(grandchild)

    for child in table.get_children():
        globals_of(child)
    return bound, read - _BUILTINS, imported


def demo_sources(source_nb) -> set[str]:
    """The sources of the cells the author tagged `demo` (free code cells only)."""
    return {
        c.source for c in source_nb.cells
        if c.cell_type == "code" and DEMO_TAG in c.metadata.get("tags", []) and grade_id(c) is None
    }


def cells_to_skip(nb, source_nb) -> tuple[set[int], str]:
    """Indices of the demo cells of the assembled `nb` that can be skipped, and why none can (or "")."""
    demos = demo_sources(source_nb)
    candidates = {i for i, c in enumerate(nb.cells) if c.cell_type == "code" and grade_id(c) is None
                  and c.source in demos}
    if not candidates:
        return set(), "no demonstration cells"
    names = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        try:
            names[i] = names_of(cell.source)
        except Dynamic as err:
            if i not in candidates:  # a demo that is dynamic is simply kept; anything else stops skipping
                return set(), f"cell {i} {err}: every cell runs"
            names[i] = None
    # A name counts as a module only if no cell binds it any other way.
    imported = set().union(*(n[2] for n in names.values() if n is not None))
    otherwise = set().union(*((n[0] - n[2]) for n in names.values() if n is not None))
    modules = imported - otherwise
    needed: set[str] = set()  # names read by cells that run after the current one
    skip: set[int] = set()
    for i in sorted(names, reverse=True):
        if names[i] is None:
            continue  # a dynamic demo: kept, and it may read anything: nothing before it is skipped
        bound, read, _ = names[i]
        touched = (bound | read) - modules
        if i in candidates and not (touched & needed) and not any(names[j] is None for j in names if j > i):
            skip.add(i)
            continue
        needed |= read - modules
    return skip, ""


def mark_skips(nb, source_nb) -> tuple[int, str]:
    """Mark the skippable demo cells of the assembled notebook; returns (how many, why none)."""
    skip, why = cells_to_skip(nb, source_nb)
    for i in skip:
        nb.cells[i].metadata[SKIP_KEY] = True
    return len(skip), why
