"""The request log: one compact JSON line per request, to a line sink when
the server is given one (`faregate serve` gives each server a writer on
stderr) and otherwise to the `faregate.requests` logger; no sink outlives its
server, and every line is out when the process exits."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
from typing import Any

import aiohttp
import pytest
from faregate_client import FaregateClient
from faregate_server.domain import ChatMessage, Role, RouteCall
from faregate_server.telemetry.request_log import LOGGER_NAME, RequestLog
from faregate_server.telemetry.request_observation import RequestObservation

from tests.conftest import StartFaregate, to_config
from tests.support.eventually import eventually

_ROUTES = 5


class _Lines:
    """A line sink that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def write(self, line: bytes) -> None:
        self.lines.append(line)


def _observation(content: str) -> RequestObservation:
    observation = RequestObservation("Route", None, lambda: 0.0)
    observation.called(
        RouteCall(
            model="",
            messages=(ChatMessage(Role.USER, content),),
            agent="coder",
            budget_key="team",
            max_output_tokens=None,
            temperature=None,
            metadata={},
        )
    )
    return observation


def test_a_line_goes_to_the_sink_as_compact_json_bytes() -> None:
    sink = _Lines()
    RequestLog(log_prompts=True, now_s=lambda: 1795000000.5, lines=sink).write(
        _observation("héllo"), 0.0042
    )
    (line,) = sink.lines
    assert line.startswith(b'{"ts":1795000000.5,"rpc":"Route",')
    assert line.endswith(b"}\n")
    assert "héllo".encode() in line  # UTF-8, not \u escapes
    assert json.loads(line)["messages"] == [{"role": "user", "content": "héllo"}]


def test_a_line_orjson_refuses_is_written_by_the_standard_library(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    lone_surrogate = "\udc80"  # from a config's escape, say: no UTF-8 for it
    sink = _Lines()
    RequestLog(log_prompts=True, lines=sink).write(_observation(lone_surrogate), 0.001)
    RequestLog(log_prompts=True).write(_observation(lone_surrogate), 0.001)

    (line,) = sink.lines
    assert b"\\udc80" in line  # escaped, as stderr would write it
    assert json.loads(line)["messages"][0]["content"] == lone_surrogate
    (record,) = [record for record in caplog.records if record.name == LOGGER_NAME]
    assert json.loads(record.getMessage())["messages"][0]["content"] == lone_surrogate


async def test_each_server_in_one_process_writes_its_own_lines_and_leaves_none_behind(
    start_faregate: StartFaregate, config_data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    config = to_config(config_data)
    read_fd, write_fd = os.pipe()
    try:
        for index in range(2):
            async with start_faregate(config, request_log_fd=write_fd) as faregate:
                await faregate.client.route("hi", budget_key="team", request_id=f"fd-{index}")
        # Leaving a server closed its writer: the next server's lines, with no
        # sink given, go to the logger again.
        async with start_faregate(config) as faregate:
            await faregate.client.route("hi", budget_key="team", request_id="logger")
    finally:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as reader:
            written = reader.read()

    assert [json.loads(line)["request_id"] for line in written.splitlines()] == ["fd-0", "fd-1"]
    logged = [record for record in caplog.records if record.name == LOGGER_NAME]
    assert [json.loads(record.getMessage())["request_id"] for record in logged] == ["logger"]


async def test_lines_lost_to_a_broken_stderr_are_counted_on_the_metrics_endpoint(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # every write fails with EPIPE (Python ignores SIGPIPE)
    try:
        async with start_faregate(to_config(config_data), request_log_fd=write_fd) as faregate:
            for _ in range(2):
                await faregate.client.route("hi", budget_key="team")
            port = faregate.running.http_port
            assert port is not None

            async def scrape() -> list[str]:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/metrics") as response,
                ):
                    lines = (await response.text()).splitlines()
                assert 'faregate_request_log_dropped_lines_total{cause="failed"} 2.0' in lines
                return lines

            lines = await eventually(scrape)
    finally:
        os.close(write_fd)
    assert 'faregate_request_log_dropped_lines_total{cause="refused"} 0.0' in lines
    assert 'faregate_request_log_dropped_lines_total{cause="unwritten"} 0.0' in lines


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
        "cached_input_tokens",
        "cache_write_input_tokens",
        "cache_write_1h_input_tokens",
        "reasoning_tokens",
        "cost_nano_usd",
        "latency_ms",
        "outcome",
        "reason",
    ]
