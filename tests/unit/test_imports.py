"""The import graph keeps its shape: adapters never import the gateway, and no module imports itself round.

Module-level imports only (an import inside a function or under ``TYPE_CHECKING`` runs later or
never); ``from package import name`` counts as importing the package's ``__init__``, and
``from package import module`` as importing that module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "adapters")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.Try, ast.If)):
            yield from node.body  # type: ignore[misc]
        else:
            yield node


def imports_of(name: str, *, everywhere: bool = False) -> set[str]:
    """The project modules ``name`` imports (at module level, or ``everywhere``)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = ast.walk(tree) if everywhere else _top_level(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {module for module in found if module in MODULES}


def test_adapters_never_import_the_gateway_anywhere() -> None:
    offenders = {
        name: sorted(m for m in imports_of(name, everywhere=True) if m.startswith("gateway"))
        for name in MODULES
        if name.startswith("adapters")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_module_imports_itself_round_a_cycle() -> None:
    graph = {name: imports_of(name) - {name} for name in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_dialects_only_translate() -> None:
    """A dialect turns bodies into a JobSpec and jobs into bodies: it reaches no endpoint, runner, store driver or adapter."""
    allowed = {"gateway.jobs", "gateway.store", "gateway.store.models", "gateway.config", "adapters.base"}
    allowed.add("adapters.reference")  # media types and reference parsing: the words a dialect translates
    for name in MODULES:
        if name.startswith("gateway.dialects."):
            reached = {m for m in imports_of(name) if not m.startswith("gateway.dialects")}
            assert reached <= allowed, f"{name} imports {sorted(reached - allowed)}"
