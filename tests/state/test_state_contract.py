"""The StateStore contract, run against every backend: memory, sqlite and a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from faregate_server.config.schema import LimitDraw
from faregate_server.domain import FinishReason, RouteResult, RoutingDecision, Usage, claim_key
from faregate_server.errors import BudgetExhausted, BudgetNotFound, RequestInFlight
from faregate_server.state.alerts import BudgetAlert
from faregate_server.state.ledger import SpendRecord
from faregate_server.state.opening import open_state
from faregate_server.state.store import StateStore

from tests.conftest import to_config
from tests.fakes.clock import FakeClock

BACKENDS = ["memory", "sqlite", "redis"]
RPM = (LimitDraw("rpm", per_request=1, per_1k_tokens=0),)


def _config(state: dict[str, Any], agent_limit_usd: float = 1.0) -> dict[str, Any]:
    return {
        "models": {
            "m": {
                "provider": "sim",
                "input_usd_per_mtok": 1,
                "output_usd_per_mtok": 1,
                "limits": {"rpm": {"per_request": 1}},
            }
        },
        "routes": {"default": ["m"]},
        "budgets": {
            "team": {"limit_usd": 10, "window": "daily"},
            "agent": {"limit_usd": agent_limit_usd, "window": "none"},
        },
        "limit_pools": {"rpm": {"unit": "requests", "capacity": 3, "window": "minute"}},
        "state": state,
        "auth": {"enabled": False},
    }


@pytest.fixture(params=BACKENDS)
def state_section(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    backend = request.param
    if backend == "redis":
        section: dict[str, Any] = request.getfixturevalue("redis_state")
        return section
    return {"backend": backend, "path": str(tmp_path / "state.db")}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(state_section: dict[str, Any], clock: FakeClock) -> AsyncIterator[StateStore]:
    opened = await open_state(to_config(_config(state_section)), clock)
    yield opened
    await opened.aclose()


def _record(request_id: str, cost: int, *budgets: str, agent: str = "a") -> SpendRecord:
    return SpendRecord(
        request_id=request_id,
        time_s=1_800_000_000.0,
        budget_keys=budgets,
        agent=agent,
        model="m",
        input_tokens=10,
        output_tokens=20,
        reserved_nano_usd=cost,
        cost_nano_usd=cost,
        outcome="succeeded",
        route="default",
        principal="agent-p",
    )


async def _settled(store: StateStore, key: str) -> tuple[int, int]:
    """(spent, reserved) once releases, which complete in the background, have."""
    for _ in range(200):
        snapshot = await store.budget(key)
        if snapshot.reserved_nano_usd == 0:
            break
        await asyncio.sleep(0.005)
    return snapshot.spent_nano_usd, snapshot.reserved_nano_usd


async def test_reserve_commit_release_keep_the_books(store: StateStore) -> None:
    first = await store.reserve(("team",), 6_000_000_000, (), ())
    assert first is not None
    with pytest.raises(BudgetExhausted) as exhausted:
        await store.reserve(("team",), 4_000_000_001, (), ())
    assert exhausted.value.remaining_nano_usd == 4_000_000_000
    second = await store.reserve(("team",), 4_000_000_000, (), ())
    assert second is not None

    remaining = await store.commit(first, 2_500_000_000, 30, _record("r1", 2_500_000_000, "team"))
    assert remaining == 10_000_000_000 - 2_500_000_000 - 4_000_000_000
    store.release(second)

    assert await _settled(store, "team") == (2_500_000_000, 0)


async def test_an_unknown_budget_is_not_found_and_holds_nothing(store: StateStore) -> None:
    with pytest.raises(BudgetNotFound):
        await store.reserve(("team", "nope"), 1, (), ())
    assert await _settled(store, "team") == (0, 0)


async def test_several_budgets_are_held_all_or_nothing(store: StateStore) -> None:
    agent_limit = 1_000_000_000
    with pytest.raises(BudgetExhausted) as exhausted:
        await store.reserve(("team", "agent"), agent_limit + 1, (), ())
    assert exhausted.value.budget_key == "agent"
    assert await _settled(store, "team") == (0, 0)

    holding = await store.reserve(("agent", "team"), 700, (), ())
    assert holding is not None
    assert (await store.budget("team")).reserved_nano_usd == 700
    remaining = await store.commit(holding, 500, 30, _record("r1", 500, "agent", "team"))

    assert remaining == agent_limit - 500  # the least either budget has left
    assert await _settled(store, "team") == (500, 0)
    assert await _settled(store, "agent") == (500, 0)


async def test_a_commit_past_its_holding_is_spent_in_full_and_refuses_the_next_reservation(
    store: StateStore,
) -> None:
    # An overrun (a whole answer's believable report over its worst case):
    # the budget is charged the truth, below zero, and admits nothing more.
    limit = 10_000_000_000
    holding = await store.reserve(("team",), 6_000_000_000, RPM, (("rpm", 1),))
    assert holding is not None
    cost = limit + 1_000_000_000
    record = dataclasses.replace(_record("over", cost, "team"), reserved_nano_usd=6_000_000_000)

    remaining = await store.commit(holding, cost, 30, record)

    assert remaining == -1_000_000_000
    assert await _settled(store, "team") == (cost, 0)
    assert (await store.budget("team")).remaining_nano_usd == -1_000_000_000
    [(_, kept)] = await store.spend("team", "", 10, None)
    assert (kept.reserved_nano_usd, kept.cost_nano_usd) == (6_000_000_000, cost)
    with pytest.raises(BudgetExhausted) as exhausted:
        await store.reserve(("team",), 1, (), ())
    assert exhausted.value.remaining_nano_usd == -1_000_000_000
    assert (await store.budget("team")).reserved_nano_usd == 0


@pytest.mark.parametrize("state_section", ["sqlite", "redis"], indirect=True)
async def test_an_overspent_budget_stays_overspent_across_a_reopen(
    state_section: dict[str, Any], clock: FakeClock
) -> None:
    # The durable backends: memory keeps nothing across a reopen.
    config = to_config(_config(state_section))
    cost = 11_000_000_000
    store = await open_state(config, clock)
    try:
        holding = await store.reserve(("team",), 6_000_000_000, (), ())
        assert holding is not None
        record = dataclasses.replace(
            _record("over", cost, "team"), time_s=clock.now_s(), reserved_nano_usd=6_000_000_000
        )
        await store.commit(holding, cost, 30, record)
    finally:
        await store.aclose()

    reopened = await open_state(config, clock)
    try:
        assert (await reopened.budget("team")).remaining_nano_usd == -1_000_000_000
        with pytest.raises(BudgetExhausted):
            await reopened.reserve(("team",), 1, (), ())
    finally:
        await reopened.aclose()


async def test_a_full_limit_pool_refuses_and_holds_nothing(store: StateStore) -> None:
    holdings = [await store.reserve(("team",), 10, RPM, (("rpm", 1),)) for _ in range(3)]
    assert all(holdings)

    assert await store.reserve(("team",), 10, RPM, (("rpm", 1),)) is None
    assert (await store.budget("team")).reserved_nano_usd == 30
    assert store.limits.snapshot("rpm").remaining == 0


async def test_concurrent_requests_never_overspend(store: StateStore) -> None:
    rng = random.Random(7)
    limit = 10_000_000_000
    admitted = 0

    async def spend(worst: int, percent: int) -> None:
        nonlocal admitted
        try:
            holding = await store.reserve(("team",), worst, (), ())
        except BudgetExhausted:
            return
        assert holding is not None
        admitted += 1
        await asyncio.sleep(0)
        if percent % 3:
            cost = worst * percent // 100
            await store.commit(holding, cost, 1, _record(f"r{admitted}", cost, "team"))
        else:
            store.release(holding)

    await asyncio.gather(
        *(spend(rng.randrange(1, 400_000_000), rng.randrange(100)) for _ in range(300))
    )
    spent, reserved = await _settled(store, "team")
    assert reserved == 0
    assert 0 < spent <= limit
    records = await store.spend("team", "", 1000, None)
    assert sum(record.cost_nano_usd for _, record in records) == spent


async def test_spend_is_queryable_newest_first_with_filters_and_pages(store: StateStore) -> None:
    for number in range(5):
        holding = await store.reserve(("team",), 100, (), ())
        assert holding is not None
        agent = "x" if number % 2 else "y"
        await store.commit(holding, number, 1, _record(f"r{number}", number, "team", agent=agent))

    page = await store.spend("team", "y", 2, None)
    assert [record.request_id for _, record in page] == ["r4", "r2"]
    assert page[0][1] == _record("r4", 4, "team", agent="y")  # every field kept
    rest = await store.spend("team", "y", 2, page[-1][0])
    assert [record.request_id for _, record in rest] == ["r0"]
    assert await store.spend("agent", "", 10, None) == []


async def test_a_request_id_is_claimed_once_and_its_result_kept(store: StateStore) -> None:
    key = claim_key("agent-p", "id-1")  # the principal of `_record`'s records
    assert await store.claim(key, "fp") is None
    with pytest.raises(RequestInFlight):
        await store.claim(key, "fp")
    assert await store.claim("id-1", "fp") is None  # the same id without a principal

    holding = await store.reserve(("team",), 100, (), ())
    assert holding is not None
    result = RouteResult(
        decision=RoutingDecision(
            request_id="id-1", model="m", provider="sim", model_version="", reserved_nano_usd=100
        ),
        output="hello",
        finish_reason=FinishReason.STOP,
        usage=Usage(10, 20),
        cost_nano_usd=60,
        budget_remaining_nano_usd=0,
    )
    remaining = await store.commit(holding, 60, 30, _record("id-1", 60, "team"), result)
    await store.unclaim(key)  # too late to matter: the result is kept

    served = await store.claim(key, "fp")
    assert served is not None
    assert (served.fingerprint, served.budget_remaining_nano_usd) == ("fp", remaining)
    assert '"output":"hello"' in served.result


async def test_an_unclaimed_id_is_free_again(store: StateStore) -> None:
    assert await store.claim("id-2", "fp") is None
    await store.unclaim("id-2")
    assert await store.claim("id-2", "fp") is None


async def test_spend_resets_at_the_window_boundary(store: StateStore, clock: FakeClock) -> None:
    holding = await store.reserve(("team",), 100, (), ())
    assert holding is not None
    await store.commit(holding, 100, 1, _record("r1", 100, "team"))
    held = await store.reserve(("team",), 50, (), ())

    clock.advance(86_400)

    snapshot = await store.budget("team")
    assert (snapshot.spent_nano_usd, snapshot.reserved_nano_usd) == (0, 50)
    assert held is not None
    store.release(held)


async def test_a_weekly_budget_resets_on_monday_at_midnight_utc(
    state_section: dict[str, Any],
) -> None:
    config = _config(state_section)
    config["budgets"]["week"] = {"limit_usd": 1, "window": "weekly"}
    # Sunday 2026-11-29 23:00 UTC: an hour before the ISO week ends.
    clock = FakeClock(1_795_993_200.0)
    store = await open_state(to_config(config), clock)
    try:
        holding = await store.reserve(("week",), 100, (), ())
        assert holding is not None
        await store.commit(holding, 100, 1, _record("w1", 100, "week"))

        clock.advance(3599)  # Sunday 23:59:59: the same week
        assert (await store.budget("week")).spent_nano_usd == 100
        clock.advance(1)  # Monday 00:00:00: a new week

        snapshot = await store.budget("week")
        assert snapshot.spent_nano_usd == 0
        assert snapshot.resets_at_s == 1_795_996_800.0 + 7 * 86400
        holding = await store.reserve(("week",), 40, (), ())
        assert holding is not None
        await store.commit(holding, 40, 1, _record("w2", 40, "week"))
        assert (await store.budget("week")).spent_nano_usd == 40
    finally:
        await store.aclose()


async def test_a_restart_sums_a_weekly_budget_from_the_ledger_within_its_week(
    tmp_path: Path,
) -> None:
    config = to_config(
        _config({"backend": "sqlite", "path": str(tmp_path / "week.db")})
        | {"budgets": {"week": {"limit_usd": 1, "window": "weekly"}}}
    )
    clock = FakeClock(1_795_993_200.0)  # Sunday 2026-11-29 23:00 UTC
    store = await open_state(config, clock)
    holding = await store.reserve(("week",), 100, (), ())
    assert holding is not None
    record = dataclasses.replace(_record("w1", 100, "week"), time_s=clock.now_s())
    await store.commit(holding, 100, 1, record)
    await store.aclose()

    clock.advance(3599)  # the same ISO week
    store = await open_state(config, clock)
    assert (await store.budget("week")).spent_nano_usd == 100
    await store.aclose()
    clock.advance(1)  # Monday 00:00 UTC
    store = await open_state(config, clock)
    assert (await store.budget("week")).spent_nano_usd == 0
    await store.aclose()


class _Alerts:
    """A sink that keeps what it is handed."""

    def __init__(self) -> None:
        self.raised: list[BudgetAlert] = []

    def budget_alert(self, alert: BudgetAlert) -> None:
        self.raised.append(alert)

    def seen(self) -> list[tuple[str, float, int]]:
        return [(a.budget_key, a.threshold, a.spent_nano_usd) for a in self.raised]


async def test_each_alert_threshold_is_crossed_once_per_window_lowest_first(
    state_section: dict[str, Any],
) -> None:
    config = _config(state_section)
    config["budgets"]["week"] = {
        "limit_usd": "0.000001",
        "window": "weekly",
        "alerts": [0.5, 0.8, 1],
    }
    config["budgets"]["team"]["alerts"] = [0.5]
    clock = FakeClock(1_795_993_200.0)  # Sunday 2026-11-29 23:00 UTC
    alerts = _Alerts()
    store = await open_state(to_config(config), clock, alerts=alerts)
    spends = iter(range(100))

    async def spend(cost: int, *budgets: str) -> None:
        holding = await store.reserve(budgets, cost, (), ())
        assert holding is not None
        await store.commit(holding, cost, 1, _record(f"a{next(spends)}", cost, *budgets))

    try:
        await spend(400, "week")  # 40% of 1,000 nano-USD
        assert alerts.seen() == []
        await spend(450, "week", "team")  # 85%: two thresholds in one commit
        assert alerts.seen() == [("week", 0.5, 850), ("week", 0.8, 850)]
        await spend(100, "week")
        await spend(49, "week")  # 999: one short of the limit
        assert len(alerts.raised) == 2
        await spend(1, "week")
        assert alerts.seen()[2:] == [("week", 1.0, 1000)]
        week_start_s = 1_795_996_800.0 - 7 * 86400  # Monday 2026-11-23 00:00 UTC
        assert {(a.window_start_s, a.limit_nano_usd) for a in alerts.raised} == {
            (week_start_s, 1000)
        }
        assert alerts.raised[2].time_s == clock.now_s()

        clock.advance(3600)  # Monday 2026-11-30: a new week, the marks again
        await spend(500, "week")
        assert alerts.seen()[3:] == [("week", 0.5, 500)]
        assert alerts.raised[3].window_start_s == 1_795_996_800.0
    finally:
        await store.aclose()


async def test_alerts_follow_an_operators_limit(state_section: dict[str, Any]) -> None:
    config = _config(state_section)
    config["budgets"]["team"]["alerts"] = [0.5]
    alerts = _Alerts()
    store = await open_state(to_config(config), FakeClock(), alerts=alerts)
    try:
        await store.update_budget("team", set_limit_nano_usd=1000)
        holding = await store.reserve(("team",), 500, (), ())
        assert holding is not None
        await store.commit(holding, 500, 1, _record("l1", 500, "team"))

        assert [(a.threshold, a.spent_nano_usd, a.limit_nano_usd) for a in alerts.raised] == [
            (0.5, 500, 1000)
        ]
    finally:
        await store.aclose()


async def test_operator_changes_hold_until_the_configured_limit_changes(
    store: StateStore, state_section: dict[str, Any]
) -> None:
    await store.update_budget("agent", set_limit_nano_usd=5)
    await store.update_budget("agent", top_up_nano_usd=10)
    assert (await store.budget("agent")).limit_nano_usd == 15
    holding = await store.reserve(("agent",), 15, (), ())
    assert holding is not None
    await store.commit(holding, 15, 1, _record("r1", 15, "agent"))
    await store.update_budget("agent", reset_spend=True)
    assert (await store.budget("agent")).spent_nano_usd == 0

    store.reconfigure(to_config(_config(state_section, agent_limit_usd=1.0)))
    assert (await store.budget("agent")).limit_nano_usd == 15  # same configured limit
    store.reconfigure(to_config(_config(state_section, agent_limit_usd=2.0)))
    assert (await store.budget("agent")).limit_nano_usd == 2_000_000_000


@pytest.mark.parametrize(
    ("cost", "tokens"),
    [(2**64, 2**64), (-(10**12), -1), (10**17, 10**17)],
    ids=["past-64-bits", "negative", "absurd"],
)
async def test_a_bad_commit_spends_at_most_its_holding_and_poisons_nothing(
    store: StateStore, cost: int, tokens: int
) -> None:
    before = await store.reserve(("team",), 100, RPM, (("rpm", 1),))
    bad = await store.reserve(("team",), 500, RPM, (("rpm", 1),))
    after = await store.reserve(("team",), 100, RPM, (("rpm", 1),))
    assert before is not None
    assert bad is not None
    assert after is not None
    poisoned = dataclasses.replace(
        _record("bad", cost, "team"), input_tokens=tokens, output_tokens=tokens
    )

    # Committed together, so a ledger that batches writes them in one batch.
    await asyncio.gather(
        store.commit(before, 60, 1, _record("before", 60, "team")),
        store.commit(bad, cost, tokens, poisoned),
        store.commit(after, 70, 1, _record("after", 70, "team")),
    )

    assert await _settled(store, "team") == (60 + 500 + 70, 0)  # the bad one: its holding
    records = {record.request_id: record for _, record in await store.spend("team", "", 10, None)}
    assert (records["before"].cost_nano_usd, records["after"].cost_nano_usd) == (60, 70)
    assert records["bad"].cost_nano_usd == 500
    assert 0 <= records["bad"].input_tokens <= 2**53
    # The budget still answers and serves.
    assert await store.reserve(("team",), 10_000_000_000 - 630, (), ()) is not None


async def test_a_flagged_record_keeps_its_flaw_and_what_was_reported(store: StateStore) -> None:
    holding = await store.reserve(("team",), 100, (), ())
    assert holding is not None
    flagged = dataclasses.replace(
        _record("lie", 100, "team"),
        usage_flaw="not_integer",
        reported_usage='{"input_tokens":"12","output_tokens":3.5}',
    )

    await store.commit(holding, 100, 1, flagged)

    [(_, kept)] = await store.spend("team", "", 10, None)
    assert kept == flagged


async def test_a_record_keeps_its_cache_and_reasoning_counts(store: StateStore) -> None:
    holding = await store.reserve(("team",), 100, (), ())
    assert holding is not None
    counted = dataclasses.replace(
        _record("cached", 100, "team"),
        input_tokens=32_010,
        cached_input_tokens=30_000,
        cache_write_input_tokens=2_000,
        cache_write_1h_input_tokens=500,
        output_tokens=40,
        reasoning_tokens=30,
    )

    await store.commit(holding, 100, 32_050, counted)

    [(_, kept)] = await store.spend("team", "", 10, None)
    assert kept == counted


async def test_a_bad_cache_count_is_clamped_not_stored(store: StateStore) -> None:
    holding = await store.reserve(("team",), 100, (), ())
    assert holding is not None
    poisoned = dataclasses.replace(
        _record("bad", 100, "team"), cached_input_tokens=2**64, reasoning_tokens=-3
    )

    await store.commit(holding, 100, 30, poisoned)

    [(_, kept)] = await store.spend("team", "", 10, None)
    assert (kept.cached_input_tokens, kept.reasoning_tokens) == (2**53 - 1, 0)
