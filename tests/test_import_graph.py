"""No import circles in the package: each module's imports form a graph without cycles.

The graph is built from the source (``ast``), mapping the top-level folders into
``cairn_migrate`` as ``pyproject.toml`` does.  Only imports that run when the
module is imported count (module level, outside ``if TYPE_CHECKING``): an import
inside a function is a deliberate late binding and cannot make an import fail
half-way.  ``python tests/test_import_graph.py`` prints the circles, with
``--all`` counting the imports inside functions too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: folder → the package it installs as (pyproject.toml, [tool.setuptools.package-dir]).
PACKAGES = {"extension": "cairn_migrate", "endpoints": "cairn_migrate.endpoints", "hooks": "cairn_migrate.hooks"}


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: list[ast.stmt], everything: bool) -> list[ast.stmt]:
    """The import statements that run at import time (or, with ``everything``, anywhere)."""
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            found += _statements(node.orelse, everything)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not everything:
            if isinstance(node, ast.ClassDef):
                found += _statements(node.body, everything)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    found += _statements([n for n in inner if isinstance(n, ast.stmt)] +
                                         [s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body],
                                         everything)
    return found


def imports_of(name: str, path: Path, known: set[str], everything: bool = False) -> set[str]:
    """The package modules ``name`` imports (``from . import x`` counts as importing ``x``)."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body, everything):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        targets.add(module)
        targets.update(f"{module}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in known and t != name}


def graph(everything: bool = False) -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found), everything) for name, path in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_package_has_no_import_circles() -> None:
    assert circles(graph()) == []


def test_the_graph_sees_real_imports() -> None:
    """The checker reads imports as Python does (a checker that finds nothing proves nothing)."""
    edges = graph()
    assert "cairn_migrate.errors" in edges["cairn_migrate.service.jobs"]
    assert "cairn_migrate.endpoints.auth" in edges["cairn_migrate.endpoints.jobs"] or \
        "cairn_migrate.endpoints" in edges["cairn_migrate.endpoints.jobs"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":  # pragma: no cover - a report for people
    for circle in circles(graph(everything="--all" in sys.argv)):
        print(" <-> ".join(c.removeprefix("cairn_migrate.") for c in circle))
