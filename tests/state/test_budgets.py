from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from faregate_server.config.schema import BudgetConfig, BudgetWindow
from faregate_server.errors import BudgetExhausted, BudgetNotFound
from faregate_server.state.budgets import MemoryBudgetStore
from faregate_server.state.windows import next_reset_s, window_start_s
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.clock import FakeClock


def _store(limit: int, window: BudgetWindow = BudgetWindow.NONE) -> MemoryBudgetStore:
    return MemoryBudgetStore([BudgetConfig("b", limit, window)], FakeClock())


async def test_reserve_commit_release_keep_the_books() -> None:
    store = _store(1_000)

    first = store.reserve(("b",), 600)
    with pytest.raises(BudgetExhausted):
        store.reserve(("b",), 401)
    second = store.reserve(("b",), 400)
    assert store.commit(first, 250) == 350  # 1000 - 250 spent - 400 reserved
    store.release(second)

    snapshot = store.snapshot("b")
    assert (snapshot.spent_nano_usd, snapshot.reserved_nano_usd) == (250, 0)


async def test_unknown_budget_is_not_found() -> None:
    with pytest.raises(BudgetNotFound):
        _store(1).reserve(("nope",), 1)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(0, 10_000),
    requests=st.lists(st.tuples(st.integers(0, 3_000), st.integers(0, 100)), max_size=40),
)
def test_concurrent_reservations_never_overspend(
    limit: int, requests: list[tuple[int, int]]
) -> None:
    async def scenario() -> None:
        store = _store(limit)

        async def spend(worst: int, percent: int) -> None:
            try:
                reservation = store.reserve(("b",), worst)
            except BudgetExhausted:
                return
            await asyncio.sleep(0)  # interleave with the others
            snapshot = store.snapshot("b")
            assert snapshot.spent_nano_usd + snapshot.reserved_nano_usd <= limit
            if percent % 3:
                store.commit(reservation, worst * percent // 100)
            else:
                store.release(reservation)

        await asyncio.gather(*(spend(worst, percent) for worst, percent in requests))
        snapshot = store.snapshot("b")
        assert snapshot.reserved_nano_usd == 0
        assert 0 <= snapshot.spent_nano_usd <= limit

    asyncio.run(scenario())


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("window", "now", "reset"),
    [
        (BudgetWindow.HOURLY, "2026-11-23 10:15:00", "2026-11-23 11:00:00"),
        (BudgetWindow.DAILY, "2026-11-23 23:59:59", "2026-11-24 00:00:00"),
        # Weeks are ISO weeks: Monday 00:00 UTC to the next, across months and years.
        (BudgetWindow.WEEKLY, "2026-11-23 00:00:00", "2026-11-30 00:00:00"),
        (BudgetWindow.WEEKLY, "2026-11-29 23:59:59", "2026-11-30 00:00:00"),
        (BudgetWindow.WEEKLY, "2026-12-31 12:00:00", "2027-01-04 00:00:00"),
        (BudgetWindow.WEEKLY, "1970-01-01 00:00:00", "1970-01-05 00:00:00"),
        (BudgetWindow.MONTHLY, "2026-12-31 12:00:00", "2027-01-01 00:00:00"),
        (BudgetWindow.MONTHLY, "2027-02-01 00:00:00", "2027-03-01 00:00:00"),
    ],
)
def test_windows_end_on_utc_calendar_boundaries(window: BudgetWindow, now: str, reset: str) -> None:
    assert next_reset_s(window, _at(now)) == _at(reset)


@given(st.integers(0, 4_000_000_000))
def test_a_week_starts_on_a_monday_at_midnight_utc_and_lasts_seven_days(now_s: int) -> None:
    start_s = window_start_s(BudgetWindow.WEEKLY, now_s)
    start = datetime.fromtimestamp(start_s, UTC)

    assert (start.isoweekday(), start.hour, start.minute, start.second) == (1, 0, 0, 0)
    assert start_s <= now_s < next_reset_s(BudgetWindow.WEEKLY, now_s) == start_s + 7 * 86400
    assert start.isocalendar()[:2] == datetime.fromtimestamp(now_s, UTC).isocalendar()[:2]


async def test_spend_resets_at_the_window_boundary_but_reservations_stay() -> None:
    clock = FakeClock(_at("2026-11-23 23:00:00"))
    store = MemoryBudgetStore([BudgetConfig("b", 100, BudgetWindow.DAILY)], clock)
    store.commit(store.reserve(("b",), 60), 60)
    held = store.reserve(("b",), 30)

    clock.advance(3600)

    snapshot = store.snapshot("b")
    assert (snapshot.spent_nano_usd, snapshot.reserved_nano_usd) == (0, 30)
    store.commit(held, 30)
    assert store.snapshot("b").remaining_nano_usd == 70
