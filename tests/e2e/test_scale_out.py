"""Several faregate processes sharing one Redis: never overspending together,
`serve --workers N`, SIGKILL mid-load, and the ledger export."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from faregate.v1 import router_pb2
from faregate_client import BudgetExhausted, FaregateClient, FaregateError, Unavailable
from faregate_server.clock import SystemClock
from faregate_server.domain import ChatMessage, Role
from faregate_server.money import Price
from faregate_server.state.opening import open_state
from faregate_server.state.store import StateStore
from faregate_server.upstream.tokens import TiktokenCounter

from tests.conftest import StartFaregate, faregate_process, sigkill_under_load, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer

GPT_PRICE = Price(2_500_000_000, 10_000_000_000)
MAX_OUTPUT = 10
PROMPT = "How many budgets fit?"


def _write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@asynccontextmanager
async def _store(state: dict[str, Any]) -> AsyncIterator[StateStore]:
    """The shared state named by a config's `state` section, read as any replica reads it."""
    data = {
        "models": {"m": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}},
        "routes": {"default": ["m"]},
        "budgets": {key: {"limit_usd": 1000} for key in ("race", "demo")},
        "state": state,
        "auth": {"enabled": False},
    }
    store = await open_state(to_config(data), SystemClock())
    try:
        yield store
    finally:
        await store.aclose()


async def test_two_processes_never_overspend_one_budget_together(
    config_data: dict[str, Any],
    redis_state: dict[str, Any],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    admitted, total = 37, 500
    input_tokens = TiktokenCounter().count_messages([ChatMessage(Role.USER, PROMPT)])
    worst_case = GPT_PRICE.cost_nano_usd(input_tokens, MAX_OUTPUT)
    config_data["budgets"]["race"] = {"limit_usd": str(Decimal(admitted * worst_case) / 10**9)}
    config_data["models"]["gpt-fake"].update(workers=16, queue=total)
    config_data["state"] = redis_state
    config_data["server"]["reload_poll_s"] = 0
    path = _write_config(tmp_path / "faregate.yaml", config_data)
    gate = asyncio.Event()
    upstream.queue(
        *(
            Script(gate=gate, usage=(input_tokens - i % 3, i % (MAX_OUTPUT + 1)))
            for i in range(total)
        )
    )

    async with (
        faregate_process("--config", str(path)) as (_, one),
        faregate_process("--config", str(path)) as (_, two),
        # No client ids: the replicas are told apart by the prefix of the ids they make.
        FaregateClient(one, generate_request_ids=False) as first,
        FaregateClient(two, generate_request_ids=False) as second,
    ):
        calls = [
            asyncio.create_task(
                client.route(
                    PROMPT,
                    budget_key="race",
                    model="gpt-fake",
                    max_output_tokens=MAX_OUTPUT,
                    timeout_s=60,
                )
            )
            for number in range(total)
            for client in [(first, second)[number % 2]]
        ]
        # Every answer waits until each call is admitted or refused.
        await eventually(
            lambda: sum(call.done() for call in calls) >= total - admitted, timeout_s=60
        )
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)

    served = [r for r in results if isinstance(r, router_pb2.RouteResponse)]
    refused = [r for r in results if isinstance(r, FaregateError)]
    assert len(served) == admitted
    assert len(refused) == total - admitted
    assert all(isinstance(error, BudgetExhausted) for error in refused)
    assert {r.request_id[:16] for r in served} != {served[0].request_id[:16]}  # both served
    reported = sum(GPT_PRICE.cost_nano_usd(i, o) for i, o in upstream.reported_usage)
    async with _store(redis_state) as store:
        budget = await store.budget("race")
        ledger = await store.spend("race", "", 1000, None)
    assert (budget.spent_nano_usd, budget.reserved_nano_usd) == (reported, 0)
    assert sum(record.cost_nano_usd for _, record in ledger) == reported
    assert sorted(record.request_id for _, record in ledger) == sorted(r.request_id for r in served)


def _sim_config(tmp_path: Path, state: dict[str, Any]) -> Path:
    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "server/faregate_server/default_config.yaml").read_text())
    config["state"] = state
    config["server"]["reload_poll_s"] = 0
    config["budgets"]["demo"]["limit_usd"] = 1000
    for model in config["models"].values():
        model["sim"] = {"first_token_delay_s": 0.01, "token_delay_s": 0.001, "output_tokens": 8}
    return _write_config(tmp_path / "faregate.yaml", config)


async def test_workers_share_one_port_and_one_budget(
    redis_state: dict[str, Any], tmp_path: Path
) -> None:
    path = _sim_config(tmp_path, redis_state)
    async with faregate_process("--config", str(path), "--workers", "2") as (_, target):
        # A connection each: gRPC would otherwise share one between channels.
        options = [("grpc.use_local_subchannel_pool", 1)]
        # No client ids: the workers are told apart by the prefix of the ids they make.
        clients = [
            FaregateClient(
                channel=grpc.aio.insecure_channel(target, options=options),
                generate_request_ids=False,
            )
            for _ in range(16)
        ]
        try:
            replies = await asyncio.gather(
                *(client.route("hi", budget_key="demo") for client in clients)
            )
        finally:
            for client in clients:
                await client.aclose()

    workers = {reply.request_id[:16] for reply in replies}  # a random prefix per process
    assert len(workers) == 2
    async with _store(redis_state) as store:
        spent = (await store.budget("demo")).spent_nano_usd
    assert spent == sum(reply.cost_nano_usd for reply in replies)


async def test_workers_without_a_shared_backend_are_refused(tmp_path: Path) -> None:
    path = _sim_config(tmp_path, {"backend": "sqlite", "path": str(tmp_path / "f.db")})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_server", "serve", "--config", str(path), "--workers", "2",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()

    assert process.returncode == 2
    assert b"needs a shared state backend" in stderr


async def test_sigkill_under_load_loses_no_spend_and_leases_return_the_rest(
    redis_state: dict[str, Any], tmp_path: Path
) -> None:
    redis_state["redis"]["lease_s"] = 1
    path = _sim_config(tmp_path, redis_state)
    answered = await sigkill_under_load(path, "demo")

    async with _store(redis_state) as store:
        killed_with = (await store.budget("demo")).reserved_nano_usd
        await asyncio.sleep(1.2)  # the dead replica's leases lapse
        await store.renew()  # type: ignore[attr-defined]
        budget = await store.budget("demo")
        recorded = {
            r.request_id: r.cost_nano_usd for _, r in await store.spend("", "", 10**4, None)
        }

    assert killed_with > 0  # requests were in flight when it died
    assert budget.reserved_nano_usd == 0
    for reply in answered:
        assert recorded[reply.request_id] == reply.cost_nano_usd
    assert budget.spent_nano_usd == sum(recorded.values())


async def test_the_ledger_exports_as_json_lines(tmp_path: Path) -> None:
    path = _sim_config(tmp_path, {"backend": "sqlite", "path": str(tmp_path / "f.db")})
    async with (
        faregate_process("--config", str(path)) as (_, target),
        FaregateClient(target) as client,
    ):
        replies = [await client.route("hi", budget_key="demo", agent="a") for _ in range(3)]

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_server", "export-spend", "--config", str(path),
        "--agent", "a", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await process.communicate()

    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    assert process.returncode == 0
    assert [line["request_id"] for line in lines] == [r.request_id for r in reversed(replies)]
    assert lines[0]["budget_keys"] == ["demo"]
    assert lines[0]["cost_nano_usd"] == replies[-1].cost_nano_usd


async def test_an_unreachable_redis_fails_closed_with_state_unavailable(
    start_faregate: StartFaregate, config_data: dict[str, Any], tmp_path: Path
) -> None:
    absent = RedisServer(tmp_path)  # a free port, never started
    config_data["state"] = {"backend": "redis", "redis": {"url": absent.url, "timeout_s": 0.2}}
    async with start_faregate(to_config(config_data)) as faregate:
        with pytest.raises(Unavailable) as refused:
            await faregate.client.route("hi", budget_key="team")

    assert refused.value.reason == "STATE_UNAVAILABLE"
    assert refused.value.retry_after_s is not None
