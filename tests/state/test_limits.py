from __future__ import annotations

import math

from faregate_server.config.schema import (
    LimitDraw,
    LimitPoolConfig,
    LimitUnit,
    RoutingConfig,
    Window,
)
from faregate_server.state.limits import LimitPools, LimitReservation, projected_draw
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.clock import FakeClock

ROUTING = RoutingConfig(use_it_or_lose_it_horizon_s=0)  # no discount unless a test asks
TOKENS = (LimitDraw("p", per_1k_tokens=1000),)  # one unit per token


def _hold(pools: LimitPools, tokens: int) -> LimitReservation | None:
    return pools.reserve(TOKENS, (("p", tokens),))


def _pools(capacity: int = 1_000, window: Window = Window.MINUTE, k: float = 1.0) -> LimitPools:
    config = LimitPoolConfig("p", LimitUnit.TOKENS, capacity, window, k)
    return LimitPools({"p": config}, FakeClock(now_s=1_800_000_010.0))


def test_draws_follow_the_pool_unit() -> None:
    units = {"rpm": LimitUnit.REQUESTS, "tpm": LimitUnit.TOKENS, "usd": LimitUnit.USD}
    draws = (
        LimitDraw("rpm", per_request=1),
        LimitDraw("tpm", per_1k_tokens=1000),
        LimitDraw("usd"),
    )

    assert projected_draw(draws, units, tokens=1_501, cost_nano_usd=77) == (
        ("rpm", 1),
        ("tpm", 1_501),
        ("usd", 77),
    )


def test_reservation_is_all_or_nothing_and_commit_records_the_actual_draw() -> None:
    pools = _pools(capacity=100)

    held = _hold(pools, 80)
    assert held is not None
    assert _hold(pools, 21) is None
    pools.commit(held, tokens=30, cost_nano_usd=0)

    snapshot = pools.snapshot("p")
    assert (snapshot.used, snapshot.reserved) == (30, 0)


def test_pool_resets_at_its_window_boundary() -> None:
    clock = FakeClock(now_s=1_800_000_030.0)
    pools = LimitPools({"p": LimitPoolConfig("p", LimitUnit.REQUESTS, 1, Window.MINUTE)}, clock)
    per_request = (LimitDraw("p", per_request=1),)
    held = pools.reserve(per_request, (("p", 1),))
    assert held is not None
    pools.commit(held, tokens=500, cost_nano_usd=0)
    assert pools.reserve(per_request, (("p", 1),)) is None

    clock.advance(30)

    assert pools.reserve(per_request, (("p", 1),)) is not None


def test_scarcity_is_infinite_when_the_draw_cannot_fit() -> None:
    pools = _pools(capacity=100)

    assert math.isinf(pools.scarcity((("p", 101),), ROUTING))
    assert pools.scarcity((("p", 100),), ROUTING) == 1.0


def test_use_it_or_lose_it_discounts_a_roomy_pool_near_its_reset() -> None:
    pools = _pools(capacity=100, window=Window.HOURLY)  # resets in 59 min 50 s
    near = RoutingConfig(use_it_or_lose_it_horizon_s=3600, use_it_or_lose_it_discount=0.5)
    far = RoutingConfig(use_it_or_lose_it_horizon_s=60, use_it_or_lose_it_discount=0.5)

    assert pools.scarcity((("p", 1),), near) == 0.5
    assert pools.scarcity((("p", 1),), far) == 1.0


@given(st.lists(st.integers(0, 1_000), min_size=2, max_size=20), st.floats(0.1, 4))
def test_scarcity_grows_monotonically_as_the_pool_drains(used: list[int], k: float) -> None:
    pools = _pools(capacity=1_000, k=k)
    multipliers = []
    for amount in sorted(used):
        step = amount - pools.snapshot("p").used
        held = _hold(pools, step)
        if held is not None:
            pools.commit(held, tokens=step, cost_nano_usd=0)
        multipliers.append(pools.scarcity((("p", 0),), ROUTING))

    assert multipliers == sorted(multipliers)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.sampled_from(["reserve", "commit", "release"]), st.integers(0, 400)),
        max_size=60,
    )
)
def test_reservations_never_drive_a_pool_past_capacity(steps: list[tuple[str, int]]) -> None:
    pools = _pools(capacity=1_000)
    held: list[tuple[LimitReservation, int]] = []
    for action, amount in steps:
        if action == "reserve":
            reservation = _hold(pools, amount)
            if reservation is not None:
                held.append((reservation, amount))
        elif held:
            reservation, reserved = held.pop(0)
            if action == "commit":
                pools.commit(reservation, tokens=min(amount, reserved), cost_nano_usd=0)
            else:
                pools.release(reservation)
        snapshot = pools.snapshot("p")
        assert snapshot.reserved >= 0
        assert snapshot.used + snapshot.reserved <= 1_000
