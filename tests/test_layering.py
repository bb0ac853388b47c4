"""The core knows no wire: no module under config/, routing/, upstream/ or
state/, nor errors.py, domain.py, content.py, money.py or clock.py, imports
grpc (or a grpc_* companion), google.rpc or google.protobuf. Read from the source with
`ast`, so an import inside a function or under TYPE_CHECKING counts too.

Loading them is checked too, in a fresh interpreter: nothing they import
reaches a wire library either.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import faregate_server
import pytest

PACKAGE = Path(faregate_server.__file__).parent
CORE = [
    *sorted((PACKAGE / "config").rglob("*.py")),
    *sorted((PACKAGE / "routing").rglob("*.py")),
    *sorted((PACKAGE / "upstream").rglob("*.py")),
    *sorted((PACKAGE / "state").rglob("*.py")),
    PACKAGE / "errors.py",
    PACKAGE / "domain.py",
    PACKAGE / "content.py",
    PACKAGE / "money.py",
    PACKAGE / "clock.py",
]


def _is_wire(module: str) -> bool:
    """grpc and its grpc_* companions, google.rpc, google.protobuf."""
    if module.partition(".")[0].startswith("grpc"):
        return True
    return module in {"google.rpc", "google.protobuf"} or module.startswith(
        ("google.rpc.", "google.protobuf.")
    )


def _imports(path: Path) -> list[str]:
    modules: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
            # `from google import protobuf` names the wire module as an alias.
            modules.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("path", CORE, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_core_modules_import_no_wire_library(path: Path) -> None:
    assert [module for module in _imports(path) if _is_wire(module)] == []


def test_the_walk_sees_the_core() -> None:
    """A moved package must not turn this test into one that checks nothing."""
    packages = {path.relative_to(PACKAGE).parts[0] for path in CORE}
    assert {"config", "routing", "upstream", "state"} <= packages
    assert len(CORE) > 30


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_core_loads_no_wire_library() -> None:
    modules = [_module_name(path) for path in CORE]
    assert "faregate_server.routing.gateway" in modules
    check = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('grpc', 'google.rpc',"
        " 'google.protobuf')))\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    subprocess.run([sys.executable, "-c", check], check=True, env=env)


def _module_path(name: str) -> Path | None:
    """The file of faregate_server module `name`, if it is one (not a package)."""
    parts = name.split(".")
    if parts[0] != "faregate_server" or len(parts) == 1:
        return None
    path = PACKAGE.joinpath(*parts[1:]).with_suffix(".py")
    return path if path.is_file() else None


def _internal_imports(path: Path) -> set[Path]:
    """The faregate_server modules path imports, TYPE_CHECKING and in-function ones included."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import module` imports the module.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found.update(target for name in names if (target := _module_path(name)) is not None)
    return found


def test_no_import_cycles() -> None:
    graph = {path: _internal_imports(path) for path in PACKAGE.rglob("*.py")}
    assert len(graph) > 60  # the walk sees the whole server
    done: set[Path] = set()
    cycles: list[str] = []

    def visit(path: Path, trail: list[Path]) -> None:
        if path in trail:
            loop = [*trail[trail.index(path) :], path]
            cycles.append(" -> ".join(str(step.relative_to(PACKAGE)) for step in loop))
            return
        if path in done:
            return
        for target in sorted(graph[path]):
            visit(target, [*trail, path])
        done.add(path)

    for path in sorted(graph):
        visit(path, [])
    assert cycles == []
