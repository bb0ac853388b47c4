"""What only the shared store does: leases, and a Redis that goes away and comes back.

Every test here runs against a real redis-server; the outage tests stop and
restart one of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from faregate_server.clock import SystemClock
from faregate_server.domain import FinishReason, RouteResult, RoutingDecision, Usage
from faregate_server.errors import BudgetExhausted, StateUnavailable
from faregate_server.state.alerts import BudgetAlert
from faregate_server.state.ledger import SpendRecord
from faregate_server.state.opening import open_state
from faregate_server.state.redis_store import RedisState
from faregate_server.state.store import StateStore

from tests.conftest import to_config
from tests.support.redis_server import RedisServer

LIMIT = 1_000_000_000  # $1


def _config(url: str, **redis: Any) -> dict[str, Any]:
    return {
        "models": {"m": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}},
        "routes": {"default": ["m"]},
        "budgets": {"team": {"limit_usd": 1, "window": "none"}},
        "state": {"backend": "redis", "redis": {"url": url, "namespace": "t", **redis}},
        "auth": {"enabled": False},
    }


def _record(request_id: str, cost: int) -> SpendRecord:
    return SpendRecord(request_id, time.time(), ("team",), "", "m", 1, 1, cost, cost, "succeeded")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and start."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def open_store() -> AsyncIterator[Any]:
    stores: list[StateStore] = []

    async def opener(config: dict[str, Any]) -> StateStore:
        store = await open_state(to_config(config), SystemClock())
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.aclose()


async def _reserved(url: str) -> int:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return int(await client.hget("{t}:budget:team", "reserved") or 0)
    finally:
        await client.aclose()


async def test_a_live_replica_renews_the_lease_of_a_long_request(
    own_redis: RedisServer, open_store: Any
) -> None:
    store = await open_store(_config(own_redis.url, lease_s=1))
    reaper = await open_store(_config(own_redis.url, lease_s=1))
    holding = await store.reserve(("team",), 500, (), ())
    assert holding is not None

    await asyncio.sleep(2.5)  # two and a half leases
    await reaper.renew()  # returns whatever has lapsed

    assert await _reserved(own_redis.url) == 500
    await store.commit(holding, 300, 2, _record("r1", 300))
    assert (await reaper.budget("team")).spent_nano_usd == 300


async def test_a_dead_replicas_reservations_return_when_its_lease_lapses(
    own_redis: RedisServer, open_store: Any
) -> None:
    doomed = await open_state(to_config(_config(own_redis.url, lease_s=1)), SystemClock())
    assert await doomed.reserve(("team",), LIMIT, (), ()) is not None
    # The replica dies: it never releases and never renews again.
    doomed._renewer.cancel()  # type: ignore[attr-defined]
    survivor = await open_store(_config(own_redis.url, lease_s=1))
    with pytest.raises(BudgetExhausted):
        await survivor.reserve(("team",), 1, (), ())

    await asyncio.sleep(1.2)

    assert await survivor.reserve(("team",), LIMIT, (), ()) is not None
    await doomed._client.aclose()  # type: ignore[attr-defined]


async def test_failing_closed_refuses_while_redis_is_away_and_recovers(
    own_redis: RedisServer, open_store: Any
) -> None:
    store = await open_store(_config(own_redis.url, timeout_s=0.2))
    assert await store.reserve(("team",), 10, (), ()) is not None

    own_redis.stop()
    started = time.monotonic()
    with pytest.raises(StateUnavailable):
        await store.reserve(("team",), 10, (), ())
    assert time.monotonic() - started < 5  # fails, never hangs

    own_redis.start()
    await asyncio.sleep(1.1)  # past the back-off after a failure
    assert await store.reserve(("team",), 10, (), ()) is not None


async def test_a_slow_redis_counts_as_unavailable(own_redis: RedisServer, open_store: Any) -> None:
    store = await open_store(_config(own_redis.url, timeout_s=0.2))
    blocker = aioredis.Redis.from_url(own_redis.url)
    sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "1"))  # type: ignore[no-untyped-call]
    await asyncio.sleep(0.1)
    try:
        with pytest.raises(StateUnavailable):
            await store.reserve(("team",), 10, (), ())
    finally:
        await sleeping
        await blocker.aclose()


async def test_failing_open_spends_within_the_emergency_cap_and_writes_it_back(
    own_redis: RedisServer, open_store: Any
) -> None:
    config = _config(
        own_redis.url, timeout_s=0.2, when_unavailable="fail_open", emergency_cap_usd=0.000001
    )
    store = await open_store(config)
    own_redis.stop()

    holding = await store.reserve(("team",), 600, (), ())  # the cap is 1,000 nano-USD
    assert holding is not None
    with pytest.raises(BudgetExhausted):
        await store.reserve(("team",), 500, (), ())
    await store.commit(holding, 400, 2, _record("offline", 400))

    own_redis.start()
    await asyncio.sleep(1.1)
    await store.renew()  # what the background loop does every lease/3

    snapshot = await store.budget("team")
    assert (snapshot.spent_nano_usd, snapshot.reserved_nano_usd) == (400, 0)
    [(_, record)] = await store.spend("team", "", 10, None)
    assert (record.request_id, record.cost_nano_usd) == ("offline", 400)
    assert await store.reserve(("team",), LIMIT - 400, (), ()) is not None  # Redis decides again


async def test_a_commit_whose_reply_was_lost_counts_once(
    own_redis: RedisServer, open_store: Any
) -> None:
    store = await open_store(_config(own_redis.url, timeout_s=0.2))
    holding = await store.reserve(("team",), 500, (), ())
    assert holding is not None
    blocker = aioredis.Redis.from_url(own_redis.url)
    sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "0.5"))  # type: ignore[no-untyped-call]
    await asyncio.sleep(0.05)

    # Redis runs the commit after its sleep, but the reply comes too late:
    # the commit is queued and written again once Redis answers.
    await store.commit(holding, 300, 2, _record("slow", 300))
    await sleeping
    await blocker.aclose()
    await asyncio.sleep(1.1)
    await store.renew()

    snapshot = await store.budget("team")
    assert (snapshot.spent_nano_usd, snapshot.reserved_nano_usd) == (300, 0)
    assert [record.request_id for _, record in await store.spend("", "", 10, None)] == ["slow"]


async def test_a_commit_whose_hold_vanished_still_charges_and_records(
    own_redis: RedisServer, open_store: Any
) -> None:
    store = await open_store(_config(own_redis.url))
    assert await store.claim("id-1", "fp") is None
    holding = await store.reserve(("team",), 500, (), ())
    assert holding is not None
    flusher = aioredis.Redis.from_url(own_redis.url)
    await flusher.flushall()  # what a restart without persistence leaves
    await flusher.aclose()

    result = RouteResult(
        decision=RoutingDecision(
            request_id="id-1", model="m", provider="sim", model_version="", reserved_nano_usd=500
        ),
        output="hello",
        finish_reason=FinishReason.STOP,
        usage=Usage(1, 1),
        cost_nano_usd=300,
        budget_remaining_nano_usd=0,
    )
    await store.commit(holding, 300, 2, _record("id-1", 300), result)

    snapshot = await store.budget("team")
    assert (snapshot.spent_nano_usd, snapshot.reserved_nano_usd) == (300, 0)
    assert [record.request_id for _, record in await store.spend("", "", 10, None)] == ["id-1"]
    served = await store.claim("id-1", "fp")
    assert served is not None  # its retry gets the result, not a second serving
    assert '"output":"hello"' in served.result


async def test_commits_queued_while_redis_restarted_empty_are_charged_and_recorded(
    own_redis: RedisServer, open_store: Any
) -> None:
    store = await open_store(_config(own_redis.url, timeout_s=0.2))
    holdings = [await store.reserve(("team",), 500, (), ()) for _ in range(3)]
    own_redis.stop()

    for number, holding in enumerate(holdings):
        assert holding is not None
        await store.commit(holding, 100 + number, 2, _record(f"queued-{number}", 100 + number))
    own_redis.start()  # empty: no holds, no budgets, no ledger
    await asyncio.sleep(1.1)  # past the back-off after a failure
    await store.renew()  # what the background loop does every lease/3

    snapshot = await store.budget("team")
    assert (snapshot.spent_nano_usd, snapshot.reserved_nano_usd) == (303, 0)
    records = [record.request_id for _, record in await store.spend("", "", 10, None)]
    assert sorted(records) == ["queued-0", "queued-1", "queued-2"]


class _Alerts:
    def __init__(self) -> None:
        self.raised: list[BudgetAlert] = []

    def budget_alert(self, alert: BudgetAlert) -> None:
        self.raised.append(alert)


async def test_each_threshold_alerts_on_one_replica_only(own_redis: RedisServer) -> None:
    config = _config(own_redis.url)
    config["budgets"]["team"]["alerts"] = [0.25, 0.5, 0.75, 1.0]
    sinks = [_Alerts() for _ in range(3)]
    replicas = [await open_state(to_config(config), SystemClock(), alerts=s) for s in sinks]
    try:

        async def spend(replica: StateStore, number: int) -> None:
            holding = await replica.reserve(("team",), LIMIT // 40, (), ())
            assert holding is not None
            await replica.commit(holding, LIMIT // 40, 1, _record(f"r{number}", LIMIT // 40))

        # 40 commits of 1/40 of the limit, spread over the replicas at once.
        await asyncio.gather(*(spend(replicas[n % 3], n) for n in range(40)))

        raised = [alert for sink in sinks for alert in sink.raised]
        assert sorted(alert.threshold for alert in raised) == [0.25, 0.5, 0.75, 1.0]
        assert sorted(alert.spent_nano_usd for alert in raised) == [
            LIMIT // 4,
            LIMIT // 2,
            3 * LIMIT // 4,
            LIMIT,
        ]
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_spend_made_while_redis_was_away_alerts_once_written_back(
    own_redis: RedisServer,
) -> None:
    config = _config(
        own_redis.url, timeout_s=0.2, when_unavailable="fail_open", emergency_cap_usd=1
    )
    config["budgets"]["team"]["alerts"] = [0.5]
    alerts = _Alerts()
    store = await RedisState.open(to_config(config), SystemClock(), alerts)
    try:
        own_redis.stop()
        holding = await store.reserve(("team",), LIMIT // 2, (), ())
        assert holding is not None
        await store.commit(holding, LIMIT // 2, 2, _record("offline", LIMIT // 2))
        assert alerts.raised == []  # the emergency allowance is not the budget

        own_redis.start()
        await asyncio.sleep(1.1)
        await store.renew()

        assert [(a.threshold, a.spent_nano_usd) for a in alerts.raised] == [(0.5, LIMIT // 2)]
    finally:
        await store.aclose()
