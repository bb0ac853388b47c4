"""Committed spend survives restarts and SIGKILL with the sqlite state backend,
and a Redis restarted empty with the redis backend."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import yaml
from faregate_server.config.load import load_config
from faregate_server.errors import StateUnavailable

from tests.conftest import StartFaregate, sigkill_under_load, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]


async def test_spend_survives_a_restart(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    config_data["state"] = {"backend": "sqlite", "path": str(tmp_path / "faregate.db")}
    upstream.default = Script(usage=(10, 2))
    async with start_faregate(to_config(config_data)) as faregate:
        replies = [await faregate.client.route("hi", budget_key="team") for _ in range(3)]
        spent = await faregate.spent_nano_usd()
        assert spent == sum(reply.cost_nano_usd for reply in replies)

    async with start_faregate(to_config(config_data)) as restarted:
        assert await restarted.spent_nano_usd() == spent
        reply = await restarted.client.route("hi", budget_key="team")
        assert reply.budget_remaining_nano_usd == 100 * 10**9 - spent - reply.cost_nano_usd


async def test_sigkill_under_load_loses_no_committed_spend(
    start_faregate: StartFaregate, tmp_path: Path
) -> None:
    config = yaml.safe_load((REPO / "server/faregate_server/default_config.yaml").read_text())
    ledger_path = tmp_path / "faregate.db"
    config["state"] = {"backend": "sqlite", "path": str(ledger_path)}
    config["server"]["reload_poll_s"] = 0
    config["budgets"]["demo"]["limit_usd"] = 1000
    for model in config["models"].values():
        model["sim"] = {"first_token_delay_s": 0.01, "token_delay_s": 0.001, "output_tokens": 8}
    path = tmp_path / "faregate.yaml"
    path.write_text(yaml.safe_dump(config))

    answered = await sigkill_under_load(path, "demo")

    with sqlite3.connect(ledger_path) as ledger:
        recorded = dict(ledger.execute("SELECT request_id, cost_nano_usd FROM spend"))
    # Every answer a caller received was recorded first, at the cost it reported.
    for reply in answered:
        assert recorded[reply.request_id] == reply.cost_nano_usd
    assert len(recorded) >= len(answered)

    # A restart picks the budget up where the killed process left it.
    async with start_faregate(load_config(path)) as restarted:
        assert await restarted.spent_nano_usd("demo") == sum(recorded.values())
        assert await restarted.reserved_nano_usd("demo") == 0


async def test_an_answer_settled_across_an_empty_redis_restart_is_charged_and_recorded(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path)  # no AOF, no snapshots: a restart forgets everything
    redis.start()
    config_data["state"] = {
        "backend": "redis",
        # A short lease: the renewal loop that writes queued commits turns often.
        "redis": {"url": redis.url, "namespace": "restart", "timeout_s": 0.2, "lease_s": 1},
    }
    gate = asyncio.Event()
    upstream.default = Script(gate=gate, usage=(20, 2))
    try:
        async with start_faregate(to_config(config_data)) as faregate:
            call = asyncio.create_task(
                faregate.client.route("hi", budget_key="team", model="gpt-fake")
            )
            await upstream.wait_for_requests(1)  # reserved: the hold is in Redis
            redis.stop()
            redis.start()
            gate.set()
            reply = await call

            # The commit is written once Redis answers again (a second of
            # back-off, then the renewal loop's next turn).
            state = faregate.running.state

            async def spent_nano_usd() -> int:
                try:
                    return (await state.budget("team")).spent_nano_usd
                except StateUnavailable:
                    return 0

            spent = await eventually(spent_nano_usd, interval_s=0.05)
            assert spent == reply.cost_nano_usd > 0
            [(_, record)] = await state.spend("team", "", 10, None)
            assert (record.request_id, record.cost_nano_usd) == (reply.request_id, spent)
    finally:
        redis.stop()
