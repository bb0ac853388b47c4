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
