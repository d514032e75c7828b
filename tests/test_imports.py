"""The import graph of broker/, proxy/ and bench/ has no circle among their modules, nor among
their packages and proxy's wings (request, replica, ops, config, telemetry, testing).

Every ``import`` and ``from ... import`` counts, wherever it is written: at the top, inside a
function, and under ``if TYPE_CHECKING`` too. A type-only circle runs nothing twice, but it ties
two modules together as much as a running one does, and it is how a real one starts.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker", "proxy", "bench")


def _modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that module ``name`` imports; ``from p import x`` is module
    ``p.x`` when there is one, else package ``p``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    imported.add(full)
                elif base in modules:
                    imported.add(base)
    imported.discard(name)
    return imported


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def wing(module: str) -> str:
    """The package a module belongs to: proxy's subpackage (its wing) for a module inside one,
    ``proxy`` for proxy's own top modules (the command line and the composition of the apps),
    else the top package."""
    parts = module.split(".")
    subpackage = ".".join(parts[:2])
    if parts[0] == "proxy" and len(parts) > 1 and (ROOT / "proxy" / parts[1]).is_dir():
        return subpackage
    return parts[0]


def wing_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between wings: one wing imports another when any of its modules does."""
    wings: dict[str, set[str]] = {wing(name): set() for name in graph}
    for name, imported in graph.items():
        wings[wing(name)] |= {wing(other) for other in imported} - {wing(name)}
    return wings


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
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
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph[target]))))
            elif target in on_stack:
                low[node] = min(low[node], index[target])
    return found


def test_the_graph_sees_the_imports_it_must() -> None:
    """The graph holds every package's modules and reads absolute, relative and type-only
    imports (so an empty list of circles means something)."""
    graph = import_graph()
    assert {"broker.pool", "proxy.request.forward", "bench.proxy_overhead"} <= graph.keys()
    assert "proxy.request.attempts" in graph["proxy.request.forward"]
    assert "proxy.config.pools" in graph["proxy.request.routing"]


def test_circles_are_found() -> None:
    """A circle, a longer one and a self-contained chain: only the circles are reported."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(circles(graph)) == [["a", "b"], ["c", "d", "e"]]


def test_no_import_circle_among_modules() -> None:
    """No module of broker/, proxy/ or bench/ imports, however indirectly, one that imports it."""
    assert circles(import_graph()) == []


def test_modules_are_grouped_by_wing() -> None:
    """A module inside one of proxy's subpackages belongs to that wing, the subpackage itself
    included; proxy's top modules to proxy; others to their top package."""
    assert wing("proxy.request.attempts") == "proxy.request"
    assert wing("proxy.testing") == "proxy.testing"
    assert wing("proxy.cli") == "proxy"
    assert wing("broker.pool") == "broker"


def test_no_import_circle_among_wings() -> None:
    """No package or wing imports, however indirectly, one that imports it: the command line and
    the apps' composition sit on top, the operator surfaces above a replica's lifecycle, the
    request path and the lifecycle above the configuration and telemetry, the broker below all."""
    wings = wing_graph(import_graph())
    assert {"broker", "proxy", "proxy.request", "proxy.replica", "proxy.ops"} <= wings.keys()
    assert circles(wings) == []
