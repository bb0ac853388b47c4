"""The `faregate` command line, run as a real subprocess: version and check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from faregate_server import __version__

from tests.conftest import TEST_ENV, base_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "server/faregate_server/default_config.yaml"


def _faregate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "faregate_server", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=TEST_ENV,
        check=False,
    )


def test_version_prints_the_package_version() -> None:
    result = _faregate("version")

    assert result.returncode == 0
    assert result.stdout == f"faregate {__version__}\n"


def test_check_config_summarises_a_valid_file_in_one_line() -> None:
    result = _faregate("check-config", str(DEFAULT_CONFIG))

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{DEFAULT_CONFIG}: ok (2 models, 1 routes, 1 budgets, 0 limit pools; auth OFF)\n"
    )


def test_check_config_reads_api_keys_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(base_config("http://127.0.0.1:9")))

    result = _faregate("check-config", str(path))

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok (3 models, 1 routes, 1 budgets, 0 limit pools; auth OFF)\n"


def test_check_config_names_the_bad_field_and_exits_2(tmp_path: Path) -> None:
    config = base_config("http://127.0.0.1:9")
    config["server"]["max_messages"] = 0
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(config))

    result = _faregate("check-config", str(path))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "faregate: bad config: server.max_messages: must be an integer >= 1\n"


def test_check_config_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = _faregate("check-config", str(tmp_path / "absent.yaml"))

    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_serve_refuses_an_address_it_could_never_listen_on() -> None:
    result = _faregate("serve", "--listen", "127.0.0.1:99999")

    assert result.returncode == 2
    assert "--listen must be host:port with a port from 0 to 65535" in result.stderr
