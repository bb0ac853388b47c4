"""SIGTERM drains a real `faregate serve`: health flips, new requests are
refused, streams in flight finish or are cut, and each is charged exactly
for what it delivered."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from faregate_client import FaregateClient, FaregateError, RouteStream, Unavailable
from faregate_server.config.load import load_config
from grpc_health.v1 import health_pb2

from tests.conftest import TEST_ENV, StartFaregate, faregate_process, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually
from tests.support.health import serving_status

STREAMS = 50
# Longer than the test: the finishing half ends on its own, however loaded the
# machine, and a second SIGTERM then cuts the stalled half (the same cut as at
# the grace's end, which test_route_still_running_… reaches by waiting).
GRACE_S = 60.0
# One token each in every tokenizer faregate uses, so a caller's deltas
# count the output tokens it received.
CHUNK = " a"


@dataclass
class Caller:
    """One stream's view from the client side."""

    request_id: str
    finishes: bool
    before_pause: int
    stream: RouteStream | None = None
    deltas: list[str] = field(default_factory=list)
    error: FaregateError | None = None


def _script(body: dict[str, Any], resume: asyncio.Event) -> Script:
    """The user message says how the stream goes: "finish K" pauses after K
    chunks until the test resumes it, then sends 3 more and ends; "cut K"
    sends K chunks and then nothing (faregate's drain must cut it)."""
    verb, count = body["messages"][-1]["content"].split()
    before = int(count)
    if verb == "finish":
        return Script(chunks=[CHUNK] * (before + 3), usage=None, pause_after=before, resume=resume)
    return Script(chunks=[CHUNK] * (before + 1), usage=None, stall_after=before)


def _config(upstream: FakeUpstream, tmp_path: Path, base: dict[str, Any]) -> Path:
    base["server"].update(shutdown_grace_s=GRACE_S, drain_delay_s=0, reload_poll_s=0)
    base["state"] = {"backend": "sqlite", "path": str(tmp_path / "faregate.db")}
    model = base["models"]["gpt-fake"]
    model.update(workers=STREAMS, queue=STREAMS, idle_timeout_s=60)
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


async def _read(client: FaregateClient, caller: Caller) -> None:
    verb = "finish" if caller.finishes else "cut"
    caller.stream = client.stream_route(
        f"{verb} {caller.before_pause}",
        budget_key="team",
        model="gpt-fake",
        request_id=caller.request_id,
        timeout_s=60,
    )
    try:
        async for text in caller.stream:
            caller.deltas.append(text)
    except FaregateError as error:
        caller.error = error


async def _wait_not_serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:

        async def not_serving() -> bool:
            return await serving_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving)
        assert await serving_status(channel, "faregate.v1.RouterService") == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )


async def _export_spend(path: Path) -> dict[str, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_server", "export-spend", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, **TEST_ENV},
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 0
    records = [json.loads(line) for line in out.decode().splitlines()]
    return {record["request_id"]: record for record in records}


async def test_sigterm_drains_streams_and_charges_exactly_what_each_delivered(
    upstream: FakeUpstream,
    config_data: dict[str, Any],
    start_faregate: StartFaregate,
    tmp_path: Path,
) -> None:
    resume = asyncio.Event()
    upstream.choose = lambda body: _script(body, resume)
    path = _config(upstream, tmp_path, config_data)
    callers = [
        Caller(str(uuid.uuid4()), finishes=index % 2 == 0, before_pause=1 + index % 4)
        for index in range(STREAMS)
    ]

    async with (
        faregate_process("--config", str(path)) as (process, target),
        FaregateClient(target) as client,
    ):
        readers = [asyncio.create_task(_read(client, caller)) for caller in callers]
        # Every stream is open and has delivered its first chunks.
        await eventually(
            lambda: all(len(caller.deltas) >= caller.before_pause for caller in callers),
            timeout_s=20,
        )

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await _wait_not_serving(target)
        # Health is NOT_SERVING only once the gate has closed: refused, not served.
        with pytest.raises(Unavailable) as refused:
            await client.route("finish 1", budget_key="team", model="gpt-fake", timeout_s=10)
        assert refused.value.reason == "SHUTTING_DOWN"
        assert refused.value.retry_after_s is not None

        # The paused half finishes within the grace; then the stalled half is cut.
        resume.set()
        finishing = [task for task, caller in zip(readers, callers, strict=True) if caller.finishes]
        async with asyncio.timeout(30):
            await asyncio.gather(*finishing)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await asyncio.gather(*readers)
            assert await process.wait() == 0

    finished = [caller for caller in callers if caller.error is None]
    cut = [caller for caller in callers if caller.error is not None]
    assert {caller.request_id for caller in finished} == {
        caller.request_id for caller in callers if caller.finishes
    }
    for caller in cut:
        assert isinstance(caller.error, Unavailable), caller.error
        assert caller.error.reason == "SHUTTING_DOWN"
        assert len(caller.deltas) == caller.before_pause

    ledger = await _export_spend(path)
    price = load_config(path, TEST_ENV).models["gpt-fake"].price
    assert set(ledger) == {caller.request_id for caller in callers}
    for caller in callers:
        record = ledger[caller.request_id]
        assert record["output_tokens"] == len(caller.deltas)
        assert record["cost_nano_usd"] == price.cost_nano_usd(
            record["input_tokens"], record["output_tokens"]
        )
        if caller.finishes:
            assert caller.stream is not None
            assert caller.stream.finish is not None
            assert record["outcome"] == "succeeded"
            assert record["cost_nano_usd"] == caller.stream.finish.cost_nano_usd
        else:
            assert record["outcome"] == "interrupted"

    async with start_faregate(load_config(path, TEST_ENV)) as restarted:
        assert await restarted.reserved_nano_usd() == 0
        assert await restarted.spent_nano_usd() == sum(
            record["cost_nano_usd"] for record in ledger.values()
        )


async def test_route_still_running_when_the_grace_ends_is_unavailable_and_costs_nothing(
    upstream: FakeUpstream, config_data: dict[str, Any], start_faregate: StartFaregate
) -> None:
    config_data["server"]["shutdown_grace_s"] = 0.1
    upstream.default = Script(gate=asyncio.Event())  # answers only after the stop
    async with start_faregate(to_config(config_data)) as faregate:
        # A client of its own: the fixture's closes before the server drains.
        client = FaregateClient(faregate.target)
        call = asyncio.create_task(client.route("hi", budget_key="team", timeout_s=30))
        await upstream.wait_for_requests(1)

    with pytest.raises(Unavailable) as cut:
        await call
    await client.aclose()

    assert cut.value.reason == "SHUTTING_DOWN"
    assert await faregate.reserved_nano_usd() == 0
    assert await faregate.spent_nano_usd() == 0
    await upstream.wait_for_disconnects(1)


async def test_workers_drain_on_sigterm_and_the_parent_exits_0(
    upstream: FakeUpstream,
    config_data: dict[str, Any],
    redis_state: dict[str, Any],
    start_faregate: StartFaregate,
    tmp_path: Path,
) -> None:
    upstream.choose = lambda body: _script(body, asyncio.Event())  # "cut K" streams only
    config_data["server"].update(shutdown_grace_s=0.2, reload_poll_s=0)
    config_data["state"] = redis_state
    config_data["models"]["gpt-fake"]["idle_timeout_s"] = 60
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(config_data))
    callers = [Caller(str(uuid.uuid4()), finishes=False, before_pause=2) for _ in range(8)]

    async with faregate_process("--config", str(path), "--workers", "2") as (process, target):
        # A connection each, so both workers get streams.
        options = [("grpc.use_local_subchannel_pool", 1)]
        clients = [
            FaregateClient(channel=grpc.aio.insecure_channel(target, options=options))
            for _ in callers
        ]
        readers = [
            asyncio.create_task(_read(client, caller))
            for client, caller in zip(clients, callers, strict=True)
        ]
        await eventually(lambda: all(len(caller.deltas) >= 2 for caller in callers), timeout_s=20)

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await asyncio.gather(*readers)
            assert await process.wait() == 0
        for client in clients:
            await client.aclose()

    for caller in callers:
        assert isinstance(caller.error, Unavailable)
        assert caller.error.reason == "SHUTTING_DOWN"
    async with start_faregate(to_config(config_data)) as restarted:
        ledger = {
            record.request_id: record
            for _, record in await restarted.running.state.spend("team", "", 100, None)
        }
        assert await restarted.reserved_nano_usd() == 0
        assert await restarted.spent_nano_usd() == sum(r.cost_nano_usd for r in ledger.values())
    assert set(ledger) == {caller.request_id for caller in callers}
    assert all(record.output_tokens == 2 for record in ledger.values())


async def test_a_second_sigterm_cuts_at_once_instead_of_waiting_out_the_grace(
    upstream: FakeUpstream, config_data: dict[str, Any], tmp_path: Path
) -> None:
    upstream.choose = lambda body: _script(body, asyncio.Event())
    config_data["server"].update(shutdown_grace_s=600, reload_poll_s=0)
    config_data["models"]["gpt-fake"]["idle_timeout_s"] = 600
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(config_data))
    caller = Caller(str(uuid.uuid4()), finishes=False, before_pause=1)

    async with (
        faregate_process("--config", str(path)) as (process, target),
        FaregateClient(target) as client,
    ):
        reader = asyncio.create_task(_read(client, caller))
        await eventually(lambda: caller.deltas, timeout_s=20)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await _wait_not_serving(target)
        process.send_signal(signal.SIGTERM)
        # Far sooner than the 600 s grace (the test would time out first).
        await reader
        assert await process.wait() == 0

    assert isinstance(caller.error, Unavailable)
    assert caller.error.reason == "SHUTTING_DOWN"
    assert caller.deltas == [CHUNK]
