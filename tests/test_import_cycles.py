"""No import cycles in src/steinsplat: the module graph, read from the source (no module is imported),
holds every `import steinsplat.x` / `from steinsplat.x import y` / `from .x import y` / `from . import x`,
at the top of a module and inside its functions alike (an import inside a function is a cycle waiting for
a caller); imports under `if TYPE_CHECKING:` are for annotations only and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "steinsplat"


def module_files(package: Path) -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is a package's __init__)} of every .py file under `package`."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def is_type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`, outside `if TYPE_CHECKING:` blocks."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if is_type_checking(child):
                todo.extend(child.orelse)  # the else branch runs
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append(child)
            todo.append(child)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}. `from .a import b` is an edge to module a.b when that
    is a module, else to a (b is a name defined there)."""
    files = module_files(package)
    root = package.name
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in files.items():
        deps: set[str] = set()
        for node in imports_of(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == root)
                continue
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root:
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                deps.add(sub if sub in files else target)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of `graph`, or None (depth-first search, iterative)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    g = import_graph()
    assert "steinsplat.shapeworld.image_metrics" in g["steinsplat.shapeworld.metrics"]  # top-level, relative
    assert "steinsplat.shapeworld.set_metrics" in g["steinsplat.shapeworld.metrics"]  # inside a function
    assert "steinsplat.pipeline" in g["steinsplat.cli"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, ("import cycle: " + " -> ".join(cycle) + "; move what both need into a module of its own "
                           "(as naming.py, shapeworld/image_metrics.py, bench/study_plan.py, export/mesh_config.py)")
