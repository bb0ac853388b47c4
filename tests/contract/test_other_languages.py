"""Stubs in other languages generate from protos/ alone.

Go's protoc-gen-go refuses a file without a `go_package`; run through the
protoc that grpcio-tools bundles, it must write both files' stubs into the
one Go package the option names. Where protoc-gen-go is not on PATH (CI
installs Debian's protoc-gen-go), the test says so and is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTOS = sorted((REPO / "protos").glob("faregate/v1/*.proto"))
GO_IMPORT_PATH = "faregate.dev/gen/go/faregate/v1"
PROTOC_GEN_GO = shutil.which("protoc-gen-go")


@pytest.mark.skipif(PROTOC_GEN_GO is None, reason="protoc-gen-go is not on PATH")
def test_protoc_gen_go_writes_one_go_package_from_protos_alone(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'protos'}",
            f"--plugin=protoc-gen-go={PROTOC_GEN_GO}", f"--go_out={tmp_path}",
            *map(str, PROTOS),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    written = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*.go"))
    assert written == [Path(GO_IMPORT_PATH) / f"{proto.stem}.pb.go" for proto in PROTOS]
    for path in written:
        assert "\npackage faregatev1\n" in (tmp_path / path).read_text()
