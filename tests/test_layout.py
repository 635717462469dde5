"""The package layout shows the architecture (docs/DESIGN.md, "Where things live"), and keeps showing it.

Every module imports; no two modules import each other, directly or around a loop (an import inside
`if TYPE_CHECKING:` does not count: it never runs); every package says in its docstring why it exists;
and the subpackages depend downwards only, so the tree reads as the layers it is.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import accountpool
import pytest

PACKAGE_DIR = Path(accountpool.__file__).parent

LAYERS: list[set[str]] = [
    {"admin", "proxy"},  # the two ways in: the operator's command, mitmproxy's hooks
    {"routing"},
    {"upstream", "translation", "simulator"},
    {"storage"},
    {""},  # the shared shapes at the top of the package (models, human_time, forecast)
]
"""Top to bottom: a module may import from its own subpackage or from a lower layer, never from a higher one."""

ENTRY_POINTS = {"accountpool.__main__", "accountpool.mitmproxy_script", "accountpool.simulator.__main__"}
"""Files run rather than imported: they sit outside the layers (and importing a `__main__` would run it)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}
PACKAGES = sorted(name for name, path in MODULES.items() if path.name == "__init__.py")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(node: ast.AST):
    """Import statements anywhere in the module (functions too), except under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _runtime_imports(other)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _runtime_imports(child)


def _imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports: `from a.b import c` names `a.b.c` when that is a module."""
    targets: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for stmt in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(stmt, ast.Import):
            targets.update(alias.name for alias in stmt.names)
            continue
        base = stmt.module or ""
        if stmt.level:
            anchor = package.split(".")[: len(package.split(".")) - (stmt.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in stmt.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {t for t in targets if t in MODULES and t != name}


GRAPH: dict[str, set[str]] = {name: _imported_modules(name, path) for name, path in MODULES.items()}


def _subpackage(module: str) -> str:
    """`routing` for `accountpool.routing` and `accountpool.routing.router`, "" for the top of the package."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and MODULES[module].name == "__init__.py"):
        return parts[1]
    return ""


def _layer(module: str) -> int:
    sub = _subpackage(module)
    return next(i for i, names in enumerate(LAYERS) if sub in names)


@pytest.mark.parametrize("name", sorted(set(MODULES) - ENTRY_POINTS))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_no_import_cycle_between_modules() -> None:
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        if module in path:
            cycle = [*path[path.index(module):], module]
            pytest.fail("import cycle: " + " → ".join(cycle))
        if module in done:
            return
        path.append(module)
        for target in sorted(GRAPH[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_the_import_graph_reads_every_kind_of_import() -> None:
    """`from x import y`, relative and nested imports count; one under `if TYPE_CHECKING:` does not."""
    source = "from accountpool.routing import router\nfrom . import admitted\ndef f():\n    import accountpool.models\n"
    tree = ast.parse(source)
    found = {type(s).__name__ for s in _runtime_imports(tree)}
    assert found == {"ImportFrom", "Import"}
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from accountpool.routing import router\n"
    assert [s.module for s in _runtime_imports(ast.parse(guarded))] == ["typing"]
    assert "accountpool.routing.admitted" in GRAPH["accountpool.routing.router"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_why_it_exists(package: str) -> None:
    docstring = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert docstring and len(docstring.split()) >= 12, f"{package}/__init__.py needs a docstring saying why it exists"


def test_subpackages_depend_downwards_only() -> None:
    upward = [f"{m} → {t}" for m in sorted(GRAPH) if m not in ENTRY_POINTS
              for t in sorted(GRAPH[m]) if _layer(t) < _layer(m)]
    assert not upward, "imports against the layers of docs/DESIGN.md: " + ", ".join(upward)


def test_only_the_operators_side_starts_the_simulator() -> None:
    """The proxy never carries the fake upstream: only `accountpool.admin` (the demo) imports it."""
    users = {m for m in GRAPH for t in GRAPH[m] if _subpackage(t) == "simulator" and _subpackage(m) != "simulator"}
    assert {_subpackage(m) for m in users} <= {"admin"}
