"""The code's layout rules, read from the source: dependencies point inward (serving/, feedback/ and training/
import neither hub/ nor a web framework), no import circle inside hub/, the CLI's modules share through
hub/cli/common.py rather than each other's private names, and the hub asks engines only what the Engine
protocol says (no getattr or hasattr on an engine)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INNER_LAYERS = ("serving", "feedback", "training")
EDGE_PACKAGES = {"hub", "fastapi", "starlette", "gradio", "uvicorn"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module and `module.name` that `path` imports, at the top or inside a function, made absolute."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def hub_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (REPO / "hub").rglob("*.py")}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for other in graph[module]:
            if other not in order:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], order[other])
        if low[module] == order[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for module in graph:
        if module not in order:
            visit(module)
    return circles


@pytest.mark.parametrize("layer", INNER_LAYERS)
def test_the_inner_layers_import_neither_the_hub_nor_a_web_framework(layer):
    offenders = {
        str(path.relative_to(REPO)): sorted(t for t in imported(path) if t.split(".")[0] in EDGE_PACKAGES)
        for path in (REPO / layer).rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_no_import_circle_inside_the_hub():
    modules = hub_modules()
    graph = {
        name: {t for t in imported(path) if t in modules and t != name} for name, path in modules.items()
    }
    assert import_circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_cli_modules_use_no_private_name_of_another_module():
    private = []
    for path in (REPO / "hub" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                private += [
                    f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                ]
    assert private == []


def test_the_hub_never_probes_an_engine_with_getattr_or_hasattr():
    probes = []
    for path in (REPO / "hub").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"getattr", "hasattr"}
                and node.args
                and "engine" in ast.unparse(node.args[0]).lower()
            ):
                probes.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert probes == []
