"""The layout is the architecture: the library never imports a command (nor the generated-video helpers), and
no module imports its importer, not even through a function-local import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidclip"
APPLICATIONS = ("vidclip.commands", "vidclip.cli", "vidclip.__main__")
TEST_HELPERS = ("vidclip.synthetic",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


LIBRARY = sorted(name for name in MODULES if not is_under(name, APPLICATIONS + TEST_HELPERS))


def imported_modules(name: str) -> set[str]:
    """Every vidclip module ``name`` imports anywhere in its file (top level, functions, TYPE_CHECKING blocks
    excluded): ``from vidclip.a import b`` names ``vidclip.a.b`` when that is a module, else ``vidclip.a``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []  # annotations only: never executed
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vidclip"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).rstrip(".")
            if not base.startswith("vidclip"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    found.discard(name)
    return {module for module in found if module in MODULES}


GRAPH = {name: imported_modules(name) for name in MODULES}


def test_the_library_never_imports_a_command_or_a_test_helper():
    offenders = {
        name: sorted(target for target in GRAPH[name] if is_under(target, APPLICATIONS + TEST_HELPERS))
        for name in LIBRARY
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_importing_every_library_module_loads_no_command():
    code = (
        "import importlib, sys\n"
        f"for name in {LIBRARY!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({APPLICATIONS + TEST_HELPERS!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_there_is_no_import_cycle():
    assert strongly_connected(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


LEAVES = {"vidclip.config", "vidclip.fileio", "vidclip.registry", "vidclip.version", "vidclip.metrics"}


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_leaf_modules_import_only_other_leaves(name):
    assert GRAPH[name] <= LEAVES, GRAPH[name] - LEAVES
