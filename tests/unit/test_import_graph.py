"""The import graph of ``src/nmsparse`` (issue 15): no cycle, the library below recipes/cli, nn below prune.

Every module is parsed with :mod:`ast` (not imported), so imports at any level count: module level, inside
functions (lazy imports), under ``TYPE_CHECKING``. Relative imports are resolved against the importing module's
package, ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module (else of ``pkg``), and
importing ``a.b.c`` also imports the packages ``a.b`` and ``a`` (their ``__init__`` runs first). A cycle is a
strongly connected component of more than one module of that graph.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "nmsparse"
#: Top layers: the library (everything else) never imports them. ``python -m nmsparse`` is the CLI's entry point.
TOP = ("nmsparse.recipes", "nmsparse.cli", "nmsparse.__main__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SRC / ROOT).rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _with_parents(name: str, modules: dict[str, Path]) -> set[str]:
    """``name`` and its parent packages, restricted to nmsparse modules (the nearest existing module for names
    that are attributes, e.g. ``nmsparse.solvers.find_mask`` -> ``nmsparse.solvers``)."""
    parts = name.split(".")
    out = set()
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in modules:
            out.add(prefix)
    return out


@cache
def import_graph() -> dict[str, set[str]]:
    """``module -> nmsparse modules it imports`` (at any level of the file), parents included."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
            else:
                continue
            for name in names:
                if name == ROOT or name.startswith(ROOT + "."):
                    targets |= _with_parents(name, modules)
        # A module's own parent packages run before it: not an import of its own, and not part of a cycle.
        targets -= _with_parents(module, modules)
        graph[module] = targets
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    """The subpackage a module belongs to (``nmsparse.solvers.exact`` -> ``nmsparse.solvers``)."""
    return ".".join(module.split(".")[:2])


def _edges_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    return sorted(f"{a} -> {b}" for a in component for b in graph[a] if b in component)


def test_graph_sees_lazy_and_relative_imports() -> None:
    graph = import_graph()
    assert "nmsparse.solvers.registry" in graph["nmsparse.solvers"]  # from .registry import ...
    assert "nmsparse.errors" in graph["nmsparse.solvers.registry"]  # from ..errors import ...
    assert "nmsparse.solvers" in graph["nmsparse.nn.linear"]  # a function-level (lazy) import
    assert len(graph) > 50


def test_no_import_cycle() -> None:
    graph = import_graph()
    # Cycles between modules, and cycles between subpackages (a module of one imports the other and back).
    package_graph: dict[str, set[str]] = {}
    for module, targets in graph.items():
        package_graph.setdefault(_package(module), set()).update(
            _package(t) for t in targets if _package(t) != _package(module)
        )
    problems = []
    for kind, g in (("modules", graph), ("packages", package_graph)):
        for component in strongly_connected(g):
            problems.append(f"{kind} cycle {sorted(component)}: {_edges_within(g, component)}")
    assert not problems, "\n".join(problems)


def test_library_does_not_import_recipes_or_cli() -> None:
    graph = import_graph()
    bad = sorted(
        f"{a} -> {b}" for a, targets in graph.items() if not a.startswith(TOP) for b in targets if b.startswith(TOP)
    )
    assert not bad, bad


def test_nn_does_not_import_prune() -> None:
    graph = import_graph()
    bad = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        if _package(a) == "nmsparse.nn"
        for b in targets
        if _package(b) == "nmsparse.prune"
    )
    assert not bad, bad


def test_kernels_do_not_import_solvers() -> None:
    graph = import_graph()
    bad = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        if _package(a) == "nmsparse.kernels"
        for b in targets
        if _package(b) == "nmsparse.solvers"
    )
    assert not bad, bad
