"""The package layout shows the architecture (docs/DESIGN.md, "Where things live"), and keeps showing it.

Every module imports; no two modules import each other, directly or around a loop (an import inside
`if TYPE_CHECKING:` does not count: it never runs), in `accountpool` or the Datasette plugin; every package
says in its docstring why it exists; the subpackages depend downwards only, in DESIGN's order, so the tree
reads as the layers it is; the dashboard takes from `accountpool` only what a dashboard may; and
docs/MODULES.md names every module, and only modules that exist.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import accountpool
import datasette_accountpool
import pytest

PACKAGE_DIR = Path(accountpool.__file__).parent
PLUGIN_DIR = Path(datasette_accountpool.__file__).parent
MODULES_MD = Path(__file__).resolve().parent.parent / "docs" / "MODULES.md"

LAYERS: list[str] = [
    "proxy",  # mitmproxy's hooks, the loopback relay
    "admin",  # the operator's command, account admin, the demo
    "routing",
    "translation",
    "upstream",
    "storage",
    "",  # the top of the package, which every layer uses (models, human_time, forecast)
    "simulator",  # imports nothing else of the package; only admin imports it (a test below)
]
"""DESIGN's list, top to bottom: a module may import from its own subpackage or a lower one, never a higher one."""

ENTRY_POINTS = {"accountpool.__main__", "accountpool.mitmproxy_script", "accountpool.simulator.__main__"}
"""Files run rather than imported: they sit outside the layers (and importing a `__main__` would run it)."""


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p, PACKAGE_DIR): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}
PLUGIN_MODULES: dict[str, Path] = {_module_name(p, PLUGIN_DIR): p for p in sorted(PLUGIN_DIR.rglob("*.py"))}
ALL_MODULES: dict[str, Path] = {**MODULES, **PLUGIN_MODULES}
PACKAGES = sorted(name for name, path in ALL_MODULES.items() if path.name == "__init__.py")


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
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in ALL_MODULES else base)
    return {t for t in targets if t in ALL_MODULES and t != name}


GRAPH: dict[str, set[str]] = {name: _imported_modules(name, path) for name, path in ALL_MODULES.items()}
"""Who imports whom, across `accountpool` and the plugin `datasette_accountpool`."""


def _subpackage(module: str) -> str:
    """`routing` for `accountpool.routing` and `accountpool.routing.router`, "" for the top of the package."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and MODULES[module].name == "__init__.py"):
        return parts[1]
    return ""


def _layer(module: str) -> int:
    return LAYERS.index(_subpackage(module))


@pytest.mark.parametrize("name", sorted(set(ALL_MODULES) - ENTRY_POINTS))
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
    assert "datasette_accountpool.views" in GRAPH["datasette_accountpool"]  # `from . import views`
    assert "accountpool.storage.store" in GRAPH["datasette_accountpool.views"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_says_why_it_exists(package: str) -> None:
    docstring = ast.get_docstring(ast.parse(ALL_MODULES[package].read_text()))
    assert docstring and len(docstring.split()) >= 12, f"{package}/__init__.py needs a docstring saying why it exists"


def test_the_layers_are_designs_subpackages() -> None:
    """Every subpackage has its place in LAYERS, and DESIGN.md lists them in LAYERS' order."""
    subpackages = {_subpackage(m) for m in MODULES}
    assert subpackages == set(LAYERS)
    design = (MODULES_MD.parent / "DESIGN.md").read_text()
    where = design.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    listed = [m.group(1) or "" for m in re.finditer(r"^- (?:`(\w+)/`|top level) —", where, re.MULTILINE)]
    assert listed == LAYERS


def test_subpackages_depend_downwards_only() -> None:
    upward = [f"{m} → {t}" for m in sorted(MODULES) if m not in ENTRY_POINTS
              for t in sorted(GRAPH[m]) if t in MODULES and _layer(t) < _layer(m)]
    assert not upward, "imports against the layers of docs/DESIGN.md: " + ", ".join(upward)


def test_only_the_operators_side_starts_the_simulator() -> None:
    """The proxy and the dashboard never carry the fake upstream: only `accountpool.admin` (the demo) imports it."""
    users = {m for m in GRAPH for t in GRAPH[m] if t in MODULES and _subpackage(t) == "simulator"
             and not (m in MODULES and _subpackage(m) == "simulator")}
    assert {_subpackage(m) if m in MODULES else m for m in users} <= {"admin"}, sorted(users)


DASHBOARD_MAY_IMPORT = {"", "admin", "upstream", "storage"}
"""The subpackages of `accountpool` the plugin may import from: the top level (models, forecast, human_time,
entry points excepted), the operator's actions it shares with the CLI, the token endpoint and its errors, and the
pool's storage. Never `proxy` (mitmproxy's side), `translation` or `simulator`."""
DASHBOARD_MAY_IMPORT_FROM_ROUTING = {"accountpool.routing.recovery", "accountpool.routing.selection"}
"""From `routing`, only the pure judgements a page explains (how an account comes back, which one is chosen):
never the router, the queue or the shapers, which are one request's path through the proxy."""
DASHBOARD_NEVER_LOADS = ("accountpool.proxy", "accountpool.routing.router", "accountpool.simulator")


def _dashboard_may_import(module: str) -> bool:
    if module in ENTRY_POINTS:
        return False
    if _subpackage(module) == "routing":
        return module in DASHBOARD_MAY_IMPORT_FROM_ROUTING
    return _subpackage(module) in DASHBOARD_MAY_IMPORT


def test_the_dashboard_imports_only_what_a_dashboard_may() -> None:
    """The plugin runs in Datasette's process: it reads the pool and acts as the operator, never as the proxy."""
    assert not any(_dashboard_may_import(m) for m in MODULES if m.startswith(DASHBOARD_NEVER_LOADS))
    wrong = [f"{m} → {t}" for m in sorted(PLUGIN_MODULES) for t in sorted(GRAPH[m])
             if t in MODULES and not _dashboard_may_import(t)]
    assert not wrong, "the dashboard imports what it may not: " + ", ".join(wrong)


def test_the_dashboard_never_loads_the_proxy_the_router_or_the_simulator() -> None:
    """Not even through what it may import (`admin.demo`, say, would bring the simulator along)."""
    seen: set[str] = set()
    todo = list(PLUGIN_MODULES)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH[module])
    assert not sorted(m for m in seen if m.startswith(DASHBOARD_NEVER_LOADS))


def _modules_md_names() -> dict[str, str]:
    """The modules docs/MODULES.md lists, by path, with the line that names each.

    A section starts with a line that opens with a package's name (`` `proxy/` — ``, `` `accountpool/` (top
    level…``); it names that package's `__init__.py`, and each `` - `name.py` `` bullet under it a module."""
    roots = {"accountpool": PACKAGE_DIR, PLUGIN_DIR.name: PLUGIN_DIR}
    named: dict[str, str] = {}
    package: Path | None = None
    for n, line in enumerate(MODULES_MD.read_text().splitlines(), 1):
        if heading := re.match(r"`(\w+)/`", line):
            package = roots.get(heading.group(1), PACKAGE_DIR / heading.group(1))
            named[str(package / "__init__.py")] = f"MODULES.md:{n}"
        elif (bullet := re.match(r"- `(\w+\.py)`", line)) and package is not None:
            named[str(package / bullet.group(1))] = f"MODULES.md:{n}"
    return named


def test_modules_md_names_every_module_and_only_modules_that_exist() -> None:
    named = _modules_md_names()
    unlisted = sorted(name for name, path in ALL_MODULES.items() if str(path) not in named)
    gone = sorted(f"{where} ({Path(path).relative_to(PACKAGE_DIR.parent.parent)})" for path, where in named.items()
                  if not Path(path).is_file())
    assert not unlisted and not gone, (f"docs/MODULES.md does not name: {', '.join(unlisted) or '-'}; "
                                       f"names modules that do not exist: {', '.join(gone) or '-'}")
