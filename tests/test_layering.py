"""The package's layout holds: layers import downwards only, no import cycle, a stable API.

Why this module exists: the layout is the architecture (``graceserve/core`` knows
sockets and the drain, ``http`` knows HTTP, ``wsgi`` knows PEP 3333, ``process``
knows signals, pidfiles and workers); an import in the wrong direction or a cycle
hidden behind ``TYPE_CHECKING`` is how that decays, so both fail here.  The
imports are read from the source (every ``import`` statement, also inside
functions and ``if TYPE_CHECKING:``), not from ``sys.modules``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import graceserve
from testsupport.process import REPO

PACKAGE = REPO / "graceserve"
LAYERS = ("core", "http", "wsgi", "process")
"""Subpackages, lowest first: each may import only from those before it."""
LEAVES = frozenset(
    {"graceserve._version", "graceserve.errors", "graceserve.logformat", "graceserve.settings"}
)
"""Top-level modules every layer may import: they import nothing of graceserve's but leaves."""
PUBLIC_API = (
    "GracefulTCPServer", "GracefulHTTPServer", "GracefulWSGIServer", "make_server", "serve",
    "DrainController", "DrainReport", "EXIT_OK", "EXIT_USAGE", "EXIT_CANNOT_START", "EXIT_CUT",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str) -> Iterator[str]:
    """graceserve's modules that module ``name`` imports, anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            submodules = [f"{source}.{alias.name}" for alias in node.names]
            if all(module in MODULES for module in submodules):
                yield from submodules  # from graceserve.http import parse
            elif source in MODULES:
                yield source


GRAPH = {name: sorted(set(imported(name)) - {name}) for name in MODULES}


def layer(name: str) -> int | None:
    """The index of the module's layer in LAYERS; None for the top level."""
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else None


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            edges = GRAPH[node]
            if child < len(edges):
                work.append((node, child + 1))
                target = edges[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            for target in edges:
                if target in on_stack:
                    low[node] = min(low[node], low[target])
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
    return found


def test_the_package_has_its_layers() -> None:
    for name in LAYERS:
        assert f"graceserve.{name}" in MODULES, f"graceserve/{name}/ is missing"
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 12, f"the top level is growing again: {top}"


def test_no_import_cycle_even_under_type_checking() -> None:
    assert cycles() == []


@pytest.mark.parametrize("name", [name for name in MODULES if layer(name) is not None])
def test_a_layer_imports_only_from_the_layers_below_it(name: str) -> None:
    own = layer(name)
    assert own is not None
    wrong = [
        target for target in GRAPH[name]
        if target not in LEAVES and (layer(target) is None or layer(target) > own)  # type: ignore[operator]
    ]  # fmt: skip
    assert wrong == [], f"{name} ({LAYERS[own]}) imports from above its layer: {wrong}"


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_a_leaf_imports_only_leaves(name: str) -> None:
    assert [target for target in GRAPH[name] if target not in LEAVES] == []


def test_the_public_api_is_unchanged() -> None:
    for name in PUBLIC_API:
        assert name in graceserve.__all__, name
        assert getattr(graceserve, name) is not None


def test_no_test_module_imports_another() -> None:
    """Tests share code through testsupport/, never by importing each other or conftest."""
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = (
                [alias.name for alias in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if not node.level
                else []
            )  # fmt: skip
            for target in names:
                if target.startswith(("test_", "conftest", "tests.")):
                    offenders.append(f"{path.name}:{node.lineno} imports {target}")
    assert offenders == []
