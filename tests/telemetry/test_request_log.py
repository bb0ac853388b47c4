"""`faregate serve` writes each request's log line to stderr as bare JSON,
through its line writer, and every line is out when the process exits."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile

from faregate_client import FaregateClient

_ROUTES = 5


async def test_faregate_serve_writes_one_json_line_per_request_to_stderr() -> None:
    with tempfile.TemporaryDirectory(prefix="faregate-") as workdir:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "faregate_server", "serve", "--listen", "127.0.0.1:0",
            "--http-listen", "",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=workdir,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            async with asyncio.timeout(20):
                line = (await process.stdout.readline()).decode()
            assert line.startswith("faregate listening on "), line
            async with FaregateClient(line.split()[-1]) as client:
                for index in range(_ROUTES):
                    await client.route("hi", budget_key="demo", request_id=f"r-{index}")
        finally:
            process.terminate()
            async with asyncio.timeout(10):
                _, stderr = await process.communicate()
        assert process.returncode == 0

    lines = [json.loads(text) for text in stderr.decode().splitlines() if text.startswith("{")]
    assert [line["request_id"] for line in lines] == [f"r-{index}" for index in range(_ROUTES)]
    assert all(line["outcome"] == "OK" and line["provider"] == "sim" for line in lines)
    assert list(lines[0]) == [
        "ts",
        "rpc",
        "request_id",
        "trace_id",
        "agent",
        "principal",
        "budget_keys",
        "route",
        "model",
        "provider",
        "attempts",
        "input_tokens",
        "output_tokens",
        "cost_nano_usd",
        "latency_ms",
        "outcome",
        "reason",
    ]
