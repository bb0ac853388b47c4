"""faregate through clients that are not ours: `buf curl` over server
reflection (standing in for grpcurl), and the `faregate` command itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from faregate.v1.router_pb2 import RouteResponse
from faregate_client import FaregateClient, NotFound

from tests.conftest import Faregate, faregate_process
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "server/faregate_server/default_config.yaml"
BUF = Path(os.environ.get("FAREGATE_BUF", REPO / ".tools/node_modules/.bin/buf"))


def _buf_installed() -> bool:
    return BUF.exists()


async def _run(*argv: str, timeout_s: float = 30) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(timeout_s):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def _buf_curl(
    faregate: Faregate, method: str = "", body: dict[str, Any] | None = None, *flags: str
) -> str:
    if not _buf_installed():
        pytest.fail(f"buf not found at {BUF}: run `make tools` (or set FAREGATE_BUF)")
    argv = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *flags]
    if body is not None:
        argv += ["--data", json.dumps(body)]
    return await _run(*argv, f"http://{faregate.target}/{method}")


async def test_reflection_lists_router_health_and_reflection(faregate: Faregate) -> None:
    listing = await _buf_curl(faregate, "", None, "--list-services")

    services = set(listing.split())
    assert {"faregate.v1.RouterService", "grpc.health.v1.Health"} <= services


async def test_health_reports_serving(faregate: Faregate) -> None:
    answer = json.loads(await _buf_curl(faregate, "grpc.health.v1.Health/Check", {}))

    assert answer == {"status": "SERVING"}


async def test_buf_curl_calls_route(faregate: Faregate, upstream: FakeUpstream) -> None:
    upstream.default = Script(chunks=["from", " buf"], usage=(5, 2))
    body = {"messages": [{"role": "ROLE_USER", "content": "hi"}], "budgetKey": "team"}

    answer = json.loads(await _buf_curl(faregate, "faregate.v1.RouterService/Route", body))

    assert answer["output"] == "from buf"
    assert answer["modelUsed"] == "gpt-fake"
    assert answer["costNanoUsd"] == str(5 * 2_500 + 2 * 10_000)


async def test_buf_curl_calls_stream_route(faregate: Faregate, upstream: FakeUpstream) -> None:
    upstream.default = Script(chunks=["a", "b", "c"], usage=(5, 3))
    body = {"messages": [{"role": "ROLE_USER", "content": "hi"}], "budgetKey": "team"}

    output = await _buf_curl(faregate, "faregate.v1.RouterService/StreamRoute", body)

    events = [json.loads(chunk) for chunk in _split_json_objects(output)]
    assert list(events[0]) == ["start"]
    assert [e["delta"]["text"] for e in events[1:-1]] == ["a", "b", "c"]
    assert events[-1]["finish"]["costNanoUsd"] == str(5 * 2_500 + 3 * 10_000)


def _split_json_objects(text: str) -> list[str]:
    decoder = json.JSONDecoder()
    objects, index = [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        _, end = decoder.raw_decode(text, index)
        objects.append(text[index:end])
        index = end
    return objects


@pytest.fixture
async def default_config_server() -> AsyncIterator[str]:
    """`faregate serve` on the embedded default config, as `make run` starts it."""
    async with faregate_process() as (_, target):
        yield target


async def test_faregate_serves_its_embedded_default_config(default_config_server: str) -> None:
    async with FaregateClient(default_config_server) as client:
        reply = await client.route("Hello!", budget_key="demo")
        planning = await client.route(
            "Plan the architecture and break down the migration approach.", budget_key="demo"
        )
        stream = client.stream_route("Hello!", budget_key="demo", model="sim-small")
        texts = [text async for text in stream]

    assert reply.provider == "sim"
    # The default route weighs quality for the task against cost: a greeting
    # goes to the cheap model, planning to the strong one.
    assert reply.model_used == "sim-small"
    assert planning.model_used == "sim-large"
    assert reply.cost_nano_usd > 0
    assert len(texts) > 1
    assert stream.finish is not None
    assert stream.finish.cost_nano_usd > 0


async def test_command_line_client_prints_the_answer_and_accounting(
    default_config_server: str,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_client", "Hello!", "--target", default_config_server,
        "--stream", "--model", "sim-small",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        stdout, stderr = await process.communicate()

    assert process.returncode == 0, stderr.decode()
    assert "simulated" in stdout.decode()
    assert "model=sim-small" in stderr.decode()
    assert "cost_nano_usd=" in stderr.decode()


async def test_sighup_reloads_the_config_file(tmp_path: Path) -> None:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["server"]["reload_poll_s"] = 0  # only the signal may reload
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(config))
    async with (
        faregate_process("--config", str(path)) as (process, target),
        FaregateClient(target) as client,
    ):
        with pytest.raises(NotFound):
            await client.route("hi", budget_key="demo", model="small-only")

        config["routes"]["small-only"] = ["sim-small"]
        path.write_text(yaml.safe_dump(config))
        process.send_signal(signal.SIGHUP)

        async def routed() -> RouteResponse:
            try:
                return await client.route("hi", budget_key="demo", model="small-only")
            except NotFound as error:
                raise AssertionError("the reloaded route is not served yet") from error

        reply = await eventually(routed, interval_s=0.05)

    assert reply.model_used == "sim-small"
