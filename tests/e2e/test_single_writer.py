"""One SQLite ledger, one writer; one port, one process (unless --workers asked).

Real `faregate serve` processes: a second one on the same ledger file, or on
the same port, fails to start with a message saying why, and the first keeps
serving as if nothing happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

import yaml
from faregate_client import FaregateClient

from tests.conftest import TEST_ENV, faregate_process

REPO = Path(__file__).resolve().parents[2]


def _sim_config(tmp_path: Path, state: dict[str, str]) -> Path:
    config = yaml.safe_load((REPO / "server/faregate_server/default_config.yaml").read_text())
    config["state"] = state
    config["server"]["reload_poll_s"] = 0
    for model in config["models"].values():
        model["sim"] = {"first_token_delay_s": 0.001, "token_delay_s": 0.001, "output_tokens": 4}
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _serve_expecting_failure(*args: str) -> tuple[int, str]:
    """Runs `faregate serve ARGS`, which must end on its own; its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_server", "serve", *args, "--http-listen", "",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **TEST_ENV},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            line = await process.stdout.readline()  # b"" once it ends
            if line.startswith(b"faregate listening"):
                process.terminate()
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not line, f"it started: {line!r}"
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_a_second_serve_on_one_sqlite_ledger_is_refused_and_the_first_serves_on(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "faregate.db"
    path = _sim_config(tmp_path, {"backend": "sqlite", "path": str(ledger)})
    async with (
        faregate_process("--config", str(path)) as (first, target),
        FaregateClient(target) as client,
    ):
        before = await client.route("hi", budget_key="demo")
        code, stderr = await _serve_expecting_failure(
            "--config", str(path), "--listen", "127.0.0.1:0"
        )
        after = await client.route("hi", budget_key="demo")

    assert code == 2
    assert "cannot start" in stderr
    assert str(ledger) in stderr
    assert f"pid {first.pid}" in stderr
    assert "Traceback" not in stderr
    with sqlite3.connect(ledger) as connection:
        recorded = connection.execute("SELECT request_id FROM spend ORDER BY rowid").fetchall()
    assert recorded == [(before.request_id,), (after.request_id,)]


async def test_export_spend_reads_the_ledger_beside_its_writer(tmp_path: Path) -> None:
    ledger = tmp_path / "faregate.db"
    path = _sim_config(tmp_path, {"backend": "sqlite", "path": str(ledger)})
    async with (
        faregate_process("--config", str(path)) as (_, target),
        FaregateClient(target) as client,
    ):
        reply = await client.route("hi", budget_key="demo")
        export = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "faregate_server", "export-spend", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **TEST_ENV},
        )  # fmt: skip
        async with asyncio.timeout(20):
            stdout, stderr = await export.communicate()
        await client.route("hi", budget_key="demo")  # the writer writes on

    assert export.returncode == 0, stderr.decode()
    assert [json.loads(line)["request_id"] for line in stdout.splitlines()] == [reply.request_id]


async def test_a_restart_on_the_ledger_starts_once_the_old_process_has_gone(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "faregate.db"
    path = _sim_config(tmp_path, {"backend": "sqlite", "path": str(ledger)})
    async with faregate_process("--config", str(path)):
        pass  # stopped with SIGTERM, exit 0: its lock is gone with it
    async with (
        faregate_process("--config", str(path)) as (_, target),
        FaregateClient(target) as client,
    ):
        reply = await client.route("hi", budget_key="demo")

    assert reply.cost_nano_usd > 0


async def test_a_second_serve_on_a_taken_port_fails_to_bind(tmp_path: Path) -> None:
    path = _sim_config(tmp_path, {"backend": "memory"})
    async with (
        faregate_process("--config", str(path)) as (_, target),
        FaregateClient(target) as client,
    ):
        code, stderr = await _serve_expecting_failure("--config", str(path), "--listen", target)
        reply = await client.route("hi", budget_key="demo")

    assert code == 1
    assert f"cannot listen on {target}" in stderr
    assert "Traceback" not in stderr
    assert reply.cost_nano_usd > 0


async def test_reuse_port_lets_a_second_process_share_the_port_on_purpose(
    tmp_path: Path,
) -> None:
    path = _sim_config(tmp_path, {"backend": "memory"})
    async with (
        faregate_process("--config", str(path), "--reuse-port") as (_, target),
        faregate_process("--config", str(path), "--reuse-port", listen=target) as (_, second),
        FaregateClient(second) as client,
    ):
        reply = await client.route("hi", budget_key="demo")

    assert second == target
    assert reply.cost_nano_usd > 0
