"""The import graph of the packages nuir and models has no cycle.

Every module is parsed with ast (nothing is imported). An edge A -> B means A imports B: ``import
x.y`` and ``from x import y`` lead to the module x.y where there is one, else to x. The implicit
import of a module's parent packages is not an edge (every submodule would then be in a cycle
with its package's __init__). Imports inside a function run on its first call, not at import:
they are listed apart, and must not close a cycle either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nuir", "models")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(node: ast.AST, package: str) -> list[str]:
    """The dotted names an import statement imports (``from a import b``: a.b); [] otherwise."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the module's package, level - 1 packages up
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def import_graph(root: Path, packages=PACKAGES) -> tuple[dict, dict]:
    """(module-level edges, function-level edges): module -> set of modules of the packages."""
    paths = {module_name(p, root): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    module_level: dict[str, set[str]] = {name: set() for name in paths}
    function_level: dict[str, set[str]] = {name: set() for name in paths}

    def target(name: str) -> str | None:
        """The module of the packages that importing `name` runs, if any."""
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        pending = [(ast.parse(path.read_text(), filename=str(path)), False)]
        while pending:  # (node, whether it is inside a function)
            node, in_function = pending.pop()
            for imported in imported_names(node, package):
                found = target(imported)
                if found is not None and found != name:
                    (function_level if in_function else module_level)[name].add(found)
            inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            pending += [(child, inside) for child in ast.iter_child_nodes(node)]
    return module_level, function_level


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] through each group of modules that import one another."""
    order: dict[str, int] = {}  # depth-first visiting order
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strongly_connected(node: str) -> None:  # Tarjan's algorithm
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in order:
                strongly_connected(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            strongly_connected(node)
    return [cycle_through(graph, group) for group in sorted(groups)]


def cycle_through(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest cycle from the group's first module back to it, inside the group."""
    start, members = group[0], set(group)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    path = [node]  # back from node to start
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt in members and nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {group}")


def describe(cycles: list[list[str]]) -> str:
    return "; ".join(" -> ".join(cycle) for cycle in cycles)


# --- the cycle finder itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    "graph,want",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
        ({"a": {"a"}}, [["a", "a"]]),
        ({"x": {"y", "z"}, "y": {"x"}, "z": {"w"}, "w": {"z"}}, [["w", "z", "w"], ["x", "y", "x"]]),
        ({"a": {"b", "c"}, "b": {"d"}, "c": {"a"}, "d": {"b"}}, [["a", "c", "a"], ["b", "d", "b"]]),
    ],
)
def test_find_cycles_names_each_cycle(graph, want):
    assert find_cycles(graph) == want


def test_the_graph_sees_imports_at_both_levels(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import f\n")
    (package / "a.py").write_text("from . import b\n\ndef f():\n    from pkg.sub import c\n")
    (package / "b.py").write_text("import pkg.sub.c as c\nimport os\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("from ..a import f\nfrom pkg import b\n")
    module_level, function_level = import_graph(tmp_path, ("pkg",))
    assert module_level == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a", "pkg.b"},
    }
    assert function_level["pkg.a"] == {"pkg.sub.c"}
    assert describe(find_cycles(module_level)) == "pkg.a -> pkg.b -> pkg.sub.c -> pkg.a"


# --- the packages --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graphs():
    return import_graph(ROOT)


def test_every_module_is_in_the_graph(graphs):
    module_level, function_level = graphs
    assert {"nuir", "nuir.ops", "nuir.bench.speed", "models.system"} <= set(module_level)
    assert "nuir._backend" in module_level["nuir.ops"]
    assert "nuir.bench._speed_cuda" in function_level["nuir.bench.speed"]


def test_module_level_imports_form_no_cycle(graphs):
    module_level, _ = graphs
    cycles = find_cycles(module_level)
    assert not cycles, f"import cycles: {describe(cycles)}"


def test_imports_inside_functions_close_no_cycle(graphs):
    module_level, function_level = graphs
    both = {name: module_level[name] | function_level[name] for name in module_level}
    cycles = find_cycles(both)
    assert not cycles, f"import cycles through imports inside functions: {describe(cycles)}"
