"""The package's layering, read from the source (an AST import graph): no import cycle between
meshlib's modules, and a request pipeline (``meshlib.pipeline``) that no HTTP client library is
loaded for.

An edge is an import at module level as it runs when the module is imported: imports inside
functions (lazy, on first use) and under ``if TYPE_CHECKING:`` (read by type checkers only) are
not edges. Importing ``a.b.c`` runs the ``__init__`` of ``a.b`` first, so it is an edge to that
package as well — except to the root package ``meshlib``, the public API that re-exports from
everywhere: no module inside imports names from it (that is itself an edge, and a cycle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "meshlib"
PACKAGE = "meshlib"
PIPELINE = "meshlib.pipeline"
CLIENT_LIBRARIES = frozenset({"httpx", "httpcore", "requests", "urllib3", "aiohttp"})


def package_sources() -> tuple[dict[str, str], set[str]]:
    """Every module of meshlib by dotted name, and which of them are packages."""
    sources: dict[str, str] = {}
    packages: set[str] = set()
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
            packages.add(".".join(parts))
        sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources, packages


def _runtime_imports(tree: ast.Module) -> Iterable[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: module level, outside TYPE_CHECKING."""

    def walk(body: list[ast.stmt]) -> Iterable[ast.Import | ast.ImportFrom]:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                yield from walk(node.body)
                for handler in node.handlers:
                    yield from walk(handler.body)
                yield from walk(node.orelse)
                yield from walk(node.finalbody)
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                yield from walk(node.body)

    return walk(tree.body)


def import_graph(
    sources: Mapping[str, str], packages: set[str]
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Edges between the modules of ``sources``, and each module's outside (top-level) imports."""
    inside: dict[str, set[str]] = {name: set() for name in sources}
    outside: dict[str, set[str]] = {name: set() for name in sources}
    for name, text in sources.items():
        here = name if name in packages else name.rpartition(".")[0]
        targets: list[str] = []
        for node in _runtime_imports(ast.parse(text)):
            if isinstance(node, ast.Import):
                targets.extend(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                parts = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            modules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in sources]
            targets.extend(modules)
            if len(modules) < len(node.names):  # a name defined in ``base`` itself
                targets.append(base)
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                outside[name].add(target.split(".")[0])
                continue
            parts = target.split(".")
            for end in range(2, len(parts) + 1):  # the packages on the way run first
                found = ".".join(parts[:end])
                if found in sources and found != name and not name.startswith(found + "."):
                    inside[name].add(found)
            if target == PACKAGE:
                inside[name].add(PACKAGE)
    return inside, outside


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
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
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def reached(edges: Mapping[str, set[str]], start: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, str]]:
    sources, packages = package_sources()
    inside, outside = import_graph(sources, packages)
    return inside, outside, sources


def test_no_import_cycle_between_meshlib_modules(
    graph: tuple[dict[str, set[str]], dict[str, set[str]], dict[str, str]],
) -> None:
    inside, _, _ = graph
    assert cycles(inside) == []


def test_no_module_imports_names_from_the_root_package(
    graph: tuple[dict[str, set[str]], dict[str, set[str]], dict[str, str]],
) -> None:
    inside, _, _ = graph
    assert sorted(name for name, deps in inside.items() if PACKAGE in deps) == []


def test_the_pipeline_loads_no_http_client_library(
    graph: tuple[dict[str, set[str]], dict[str, set[str]], dict[str, str]],
) -> None:
    inside, outside, sources = graph
    core = [name for name in sources if name == PIPELINE or name.startswith(PIPELINE + ".")]
    assert core, "meshlib.pipeline is missing"
    loaded = reached(inside, core)
    offenders = {
        name: sorted(outside[name] & CLIENT_LIBRARIES)
        for name in sorted(loaded)
        if outside[name] & CLIENT_LIBRARIES
    }
    assert offenders == {}


def test_the_pipeline_builds_on_no_adapter_even_for_types(
    graph: tuple[dict[str, set[str]], dict[str, set[str]], dict[str, str]],
) -> None:
    """The core names no client adapter nor server shell anywhere, type hints included."""
    _, _, sources = graph
    for name, text in sources.items():
        if name != PIPELINE and not name.startswith(PIPELINE + "."):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
            elif isinstance(node, ast.Import):
                module = node.names[0].name
            else:
                continue
            assert not module.startswith(("meshlib.clients", "meshlib.server")), (name, module)
            assert module.split(".")[0] not in CLIENT_LIBRARIES, (name, module)


# ------------------------------------------------------------------ the checker itself

_CYCLE = {
    "meshlib": "from meshlib.a import A\n",
    "meshlib.a": "from meshlib.b import B\nA = 1\n",
    "meshlib.b": "import httpx\nfrom meshlib import c\nB = 2\n",
    "meshlib.c": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from meshlib.a import A\n"
        "def lazy():\n    from meshlib.a import A\n    return A\n"
    ),
    "meshlib.pkg": "",
    "meshlib.pkg.d": "from . import e\n",
    "meshlib.pkg.e": "from meshlib.a import A\n",
}


def test_the_checker_sees_a_cycle_and_ignores_lazy_and_type_only_imports() -> None:
    inside, outside = import_graph(_CYCLE, {"meshlib", "meshlib.pkg"})
    assert cycles(inside) == []  # c -> a only under TYPE_CHECKING and in a function
    assert inside["meshlib.b"] == {"meshlib.c"}
    assert inside["meshlib.pkg.e"] == {"meshlib.a"}
    assert inside["meshlib.pkg.d"] == {"meshlib.pkg.e"}
    assert outside["meshlib.b"] == {"httpx"}
    looped = dict(_CYCLE, **{"meshlib.c": "from meshlib.pkg.d import x\n"})
    inside, _ = import_graph(looped, {"meshlib", "meshlib.pkg"})
    # c -> pkg.d runs pkg's __init__ first, then d -> e -> a -> b -> c
    assert cycles(inside) == [
        ["meshlib.a", "meshlib.b", "meshlib.c", "meshlib.pkg.d", "meshlib.pkg.e"]
    ]
    assert reached(inside, ["meshlib.pkg.e"]) >= {"meshlib.b"}


def test_the_checker_sees_a_name_taken_from_the_root_package() -> None:
    inside, _ = import_graph(
        {"meshlib": "from meshlib.a import A\n", "meshlib.a": "import meshlib\nA = 1\n"},
        {"meshlib"},
    )
    assert inside["meshlib.a"] == {"meshlib"}  # the root is never an implicit edge, but...
    assert cycles(inside) == [["meshlib", "meshlib.a"]]  # ...an explicit one is a cycle
