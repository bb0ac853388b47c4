"""faregate-client installs on its own: three dependencies, nothing else imported.

client/pyproject.toml declares exactly grpcio, protobuf and
googleapis-common-protos, and every module under client/ (the handwritten
client and the generated stubs alike) imports only those, the standard
library and its own two packages. Read from the source with `ast`, so an
import inside a function counts too. The wheel built from client/ carries
both packages with their py.typed markers, the stubs' .pyi files and the
`faregate-client` command.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "client"
DEPENDENCIES = {"grpcio", "protobuf", "googleapis-common-protos"}
OWN_PACKAGES = {"faregate", "faregate_client"}
PROVIDED_BY = {
    "grpc": "grpcio",
    "google.protobuf": "protobuf",
    "google.rpc": "googleapis-common-protos",
}
"""The import roots each dependency provides."""
MODULES = sorted(CLIENT.glob("faregate*/**/*.py"))


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _imports(path: Path) -> list[str]:
    modules: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return modules


def _allowed(module: str) -> bool:
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top in OWN_PACKAGES:
        return True
    return any(module == root or module.startswith(f"{root}.") for root in PROVIDED_BY)


def test_the_client_declares_exactly_grpcio_protobuf_and_googleapis_common_protos() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]

    assert {_name(requirement) for requirement in project["dependencies"]} == DEPENDENCIES
    assert len(project["dependencies"]) == len(DEPENDENCIES)
    assert "optional-dependencies" not in project


def test_the_server_depends_on_the_client_distribution() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    assert "faregate-client" in {_name(requirement) for requirement in project["dependencies"]}


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(CLIENT)))
def test_client_modules_import_only_the_stdlib_their_packages_and_the_three(path: Path) -> None:
    assert [module for module in _imports(path) if not _allowed(module)] == []


def test_the_walk_sees_the_handwritten_client_and_the_generated_stubs() -> None:
    names = {str(path.relative_to(CLIENT)) for path in MODULES}

    assert {"faregate_client/_client.py", "faregate/v1/router_pb2_grpc.py"} <= names


@pytest.mark.parametrize(("root", "distribution"), PROVIDED_BY.items())
def test_each_allowed_import_root_is_installed_by_its_dependency(
    root: str, distribution: str
) -> None:
    files = importlib.metadata.distribution(distribution).files or []

    assert any(str(file).startswith(root.replace(".", "/") + "/") for file in files)


@pytest.mark.timeout(180)
def test_the_wheel_carries_both_packages_typed_with_the_stubs_and_the_command(
    tmp_path: Path,
) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = shutil.copytree(CLIENT, tmp_path / "client", ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"
    ))  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=170,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("faregate_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(name.rpartition("/")[0] for name in names if name.endswith("/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()

    assert {"faregate/py.typed", "faregate_client/py.typed"} <= names
    assert {"faregate/v1/router_pb2.pyi", "faregate/v1/router_pb2_grpc.pyi"} <= names
    assert {"faregate/v1/admin_pb2.py", "faregate_client/__main__.py"} <= names
    assert {name.partition("/")[0] for name in names} == {*OWN_PACKAGES, info}
    requirements = metadata.get_all("Requires-Dist") or []
    assert {_name(requirement) for requirement in requirements} == DEPENDENCIES
    assert "faregate-client = faregate_client.__main__:main" in entry_points
