"""The modules of ntkflow import each other without a circle.

Every import statement counts, wherever it stands: at the top of a module, inside a
function, under ``if TYPE_CHECKING:``. An import moved into a function still needs the
other module to be importable first, and a type-only import still ties the two modules'
designs together, so neither may close a circle. ``from . import name`` is an edge to the
submodule ``name`` when there is one, else to the package itself (its ``__init__``, which
imports most modules: a submodule reading a name from it is a circle). Imports made by
name at run time (``importlib.import_module``, as ``_core`` loads the compiled core) are
not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ntkflow

PACKAGE = Path(ntkflow.__file__).parent
ROOT = "ntkflow"  # the package's own node: its __init__.py


def _modules() -> dict[str, Path]:
    return {ROOT if p.stem == "__init__" else p.stem: p for p in PACKAGE.glob("*.py")}


def _targets(node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The package's modules one import statement reaches."""
    if isinstance(node, ast.Import):
        parts = [a.name.split(".") for a in node.names]
        return [p[1] if len(p) > 1 else ROOT for p in parts if p[0] == ROOT]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:  # from ntkflow[.mod] import ...
        parts = (node.module or "").split(".")
        if parts[0] != ROOT:
            return []
        inner = parts[1:]
    elif node.level == 1:  # from .[mod] import ...
        inner = node.module.split(".") if node.module else []
    else:  # pragma: no cover - no subpackages
        raise AssertionError(f"unexpected relative import level {node.level}")
    if inner:
        return [inner[0]]
    return [a.name if a.name in modules else ROOT for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (any import statement, anywhere)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {t for node in ast.walk(tree) for t in _targets(node, modules)
                       if t != name}
        unknown = graph[name] - modules.keys() - {"_core_baseline", "_core_v3", "_core_v4"}
        assert not unknown, f"{path.name} imports {unknown}, which are not modules here"
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as a path [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(v: str) -> list[str] | None:
        path.append(v)
        on_path.add(v)
        for w in sorted(graph.get(v, ())):
            if w in on_path:
                return path[path.index(w):] + [w]
            if w not in done:
                found = visit(w)
                if found:
                    return found
        path.pop()
        on_path.discard(v)
        done.add(v)
        return None

    for v in sorted(graph):
        if v not in done:
            found = visit(v)
            if found:
                return found
    return None


def test_the_graph_sees_imports_of_every_kind() -> None:
    g = import_graph()
    assert {"result", "_initial", "specs"} <= g["_simulate"]  # top level
    assert "studies" in g["config"]  # inside a function only
    assert "_exact_line" in g["mechanisms"]  # under TYPE_CHECKING only
    assert "exact" in g[ROOT]  # from . import exact
    assert ROOT in g["cli"]  # from . import __version__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
