from __future__ import annotations

import logging
import math
import random
from fractions import Fraction
from typing import Any

import pytest
from faregate_server.config.schema import BreakerSettings
from faregate_server.upstream.breakers import (
    NEUTRAL_LATENCY_S,
    BreakerState,
    CircuitBreaker,
    LatencyTracker,
    RetryBudget,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.clock import FakeClock

# Thresholds high enough that only the one a test exercises can trip the breaker.
_NEVER = 1_000


def _breaker(clock: FakeClock, **overrides: Any) -> CircuitBreaker:
    return CircuitBreaker("gpt-fake@east", BreakerSettings(**overrides), clock)


def _trip(breaker: CircuitBreaker) -> None:
    while breaker.state is BreakerState.CLOSED:
        breaker.on_failure(breaker.on_attempt_start())


# --- circuit breaker -------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures() -> None:
    breaker = _breaker(FakeClock(), consecutive_failures=3, min_requests=_NEVER)

    breaker.on_failure(breaker.on_attempt_start())
    breaker.on_failure(breaker.on_attempt_start())
    assert (breaker.state, breaker.allows()) == (BreakerState.CLOSED, True)

    breaker.on_failure(breaker.on_attempt_start())
    assert (breaker.state, breaker.allows()) == (BreakerState.OPEN, False)


def test_success_resets_the_consecutive_failure_count() -> None:
    breaker = _breaker(FakeClock(), consecutive_failures=3, min_requests=_NEVER)

    for outcome in "FFSFF":
        breaker.on_failure(breaker.on_attempt_start()) if outcome == "F" else breaker.on_success(
            breaker.on_attempt_start()
        )

    assert breaker.state is BreakerState.CLOSED
    assert breaker.statistics().consecutive_failures == 2


def test_breaker_opens_on_error_rate_over_the_window() -> None:
    breaker = _breaker(
        FakeClock(), consecutive_failures=_NEVER, error_rate=0.5, min_requests=10, window_s=30.0
    )

    for _ in range(4):
        breaker.on_success(breaker.on_attempt_start())
        breaker.on_failure(breaker.on_attempt_start())
    breaker.on_success(breaker.on_attempt_start())
    # 4 of 9: below min_requests anyway.
    assert (breaker.state, breaker.allows()) == (BreakerState.CLOSED, True)

    breaker.on_failure(breaker.on_attempt_start())  # 5 of 10
    assert breaker.state is BreakerState.OPEN


def test_breaker_stays_closed_on_a_tolerable_error_rate() -> None:
    breaker = _breaker(FakeClock(), consecutive_failures=_NEVER, error_rate=0.5, min_requests=10)

    for _ in range(20):
        breaker.on_success(breaker.on_attempt_start())
        breaker.on_success(breaker.on_attempt_start())
        breaker.on_failure(breaker.on_attempt_start())

    assert breaker.state is BreakerState.CLOSED
    assert (breaker.statistics().window_requests, breaker.statistics().window_failures) == (60, 20)


def test_breaker_does_not_open_below_min_requests() -> None:
    breaker = _breaker(FakeClock(), consecutive_failures=_NEVER, error_rate=0.5, min_requests=10)

    for _ in range(9):
        breaker.on_failure(breaker.on_attempt_start())

    assert breaker.state is BreakerState.CLOSED


def test_failures_older_than_the_window_age_out() -> None:
    clock = FakeClock()
    breaker = _breaker(
        clock, consecutive_failures=_NEVER, error_rate=0.5, min_requests=10, window_s=30.0
    )
    for _ in range(5):
        breaker.on_failure(breaker.on_attempt_start())

    clock.advance(31.0)
    for _ in range(9):
        breaker.on_success(breaker.on_attempt_start())
    breaker.on_failure(breaker.on_attempt_start())

    assert breaker.state is BreakerState.CLOSED
    statistics = breaker.statistics()
    assert (statistics.window_requests, statistics.window_failures) == (10, 1)


def test_failures_inside_the_window_still_count() -> None:
    clock = FakeClock()
    breaker = _breaker(
        clock, consecutive_failures=_NEVER, error_rate=0.5, min_requests=10, window_s=30.0
    )
    for _ in range(5):
        breaker.on_failure(breaker.on_attempt_start())

    clock.advance(24.0)
    for _ in range(4):
        breaker.on_success(breaker.on_attempt_start())
    breaker.on_failure(breaker.on_attempt_start())  # 6 of 10 within the last 30 s

    assert breaker.state is BreakerState.OPEN


def test_open_breaker_rejects_until_the_cooldown_passes() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, cooldown_s=10.0)
    _trip(breaker)

    clock.advance(9.9)
    assert (breaker.state, breaker.allows()) == (BreakerState.OPEN, False)

    clock.advance(0.1)
    assert (breaker.state, breaker.allows()) == (BreakerState.HALF_OPEN, True)


def test_allows_in_s_is_the_rest_of_the_cooldown_then_unknown_while_trials_run() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, cooldown_s=10.0, half_open_trials=1)
    assert breaker.allows_in_s() == 0.0

    _trip(breaker)
    assert breaker.allows_in_s() == 10.0
    clock.advance(7.5)
    assert breaker.allows_in_s() == 2.5

    clock.advance(2.5)
    assert breaker.allows_in_s() == 0.0  # cooled down: a trial may go
    ticket = breaker.on_attempt_start()
    assert breaker.allows_in_s() == math.inf  # the trial's verdict decides

    breaker.on_success(ticket)
    assert breaker.allows_in_s() == 0.0


def test_allows_changes_nothing() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, cooldown_s=10.0, half_open_trials=1)
    _trip(breaker)
    clock.advance(10.0)

    before = breaker.statistics()
    assert all(breaker.allows() for _ in range(5))
    assert breaker.statistics() == before


def test_half_open_allows_exactly_the_configured_concurrent_trials() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, cooldown_s=10.0, half_open_trials=2)
    _trip(breaker)
    clock.advance(10.0)

    admitted = 0
    while breaker.allows():
        breaker.on_attempt_start()  # trials stay in flight
        admitted += 1
        assert admitted <= 2

    assert admitted == 2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.statistics().trials_in_flight == 2


def test_trial_success_closes_and_resets_the_counters() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=2, cooldown_s=10.0)
    _trip(breaker)
    clock.advance(10.0)

    breaker.on_success(breaker.on_attempt_start())

    assert breaker.state is BreakerState.CLOSED
    statistics = breaker.statistics()
    assert statistics.consecutive_failures == 0
    assert (statistics.window_requests, statistics.window_failures) == (0, 0)
    breaker.on_failure(
        breaker.on_attempt_start()
    )  # one failure is not two in a row: the old ones were forgotten
    assert breaker.state is BreakerState.CLOSED


def test_trial_failure_reopens_with_a_fresh_cooldown() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, cooldown_s=10.0)
    _trip(breaker)
    clock.advance(10.0)
    trial = breaker.on_attempt_start()

    clock.advance(4.0)
    breaker.on_failure(trial)
    assert breaker.state is BreakerState.OPEN

    clock.advance(9.0)  # 23 s after the first trip, 9 s after the second
    assert not breaker.allows()
    clock.advance(1.0)
    assert breaker.allows()


def test_abandoned_trial_frees_its_slot_without_changing_state() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, cooldown_s=10.0, half_open_trials=1)
    _trip(breaker)
    clock.advance(10.0)
    trial = breaker.on_attempt_start()
    assert not breaker.allows()

    breaker.on_abandoned(trial)

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allows()
    assert breaker.statistics().opened_total == 1


def test_verdicts_of_attempts_started_before_opening_are_ignored() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, cooldown_s=10.0)
    stragglers = [breaker.on_attempt_start() for _ in range(3)]  # e.g. long streams
    _trip(breaker)
    opened_at_s = clock.monotonic_s()

    clock.advance(5.0)
    breaker.on_success(stragglers[0])
    breaker.on_failure(stragglers[1])
    breaker.on_abandoned(stragglers[2])

    statistics = breaker.statistics()
    assert statistics.state is BreakerState.OPEN
    assert (statistics.opened_total, statistics.opened_at_s) == (1, opened_at_s)


def test_statistics_reflect_each_transition() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=2, cooldown_s=10.0)
    assert breaker.statistics().state is BreakerState.CLOSED
    assert breaker.statistics().opened_at_s is None

    _trip(breaker)
    first_trip_s = clock.monotonic_s()
    statistics = breaker.statistics()
    assert (statistics.state, statistics.opened_total, statistics.opened_at_s) == (
        BreakerState.OPEN,
        1,
        first_trip_s,
    )
    assert statistics.consecutive_failures == 2

    clock.advance(10.0)
    trial = breaker.on_attempt_start()
    assert breaker.statistics().state is BreakerState.HALF_OPEN
    assert breaker.statistics().trials_in_flight == 1

    breaker.on_failure(trial)
    statistics = breaker.statistics()
    assert (statistics.state, statistics.opened_total, statistics.opened_at_s) == (
        BreakerState.OPEN,
        2,
        first_trip_s + 10.0,
    )
    assert statistics.trials_in_flight == 0

    clock.advance(10.0)
    breaker.on_success(breaker.on_attempt_start())
    statistics = breaker.statistics()
    assert (statistics.state, statistics.opened_total, statistics.opened_at_s) == (
        BreakerState.CLOSED,
        2,
        None,
    )


def test_transitions_are_logged_with_name_states_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=2, cooldown_s=10.0)

    with caplog.at_level(logging.INFO, logger="faregate_server.upstream.breakers"):
        _trip(breaker)
        clock.advance(10.0)
        breaker.on_success(breaker.on_attempt_start())

    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (
            logging.WARNING,
            "circuit breaker gpt-fake@east: closed -> open (2 consecutive failures)",
        ),
        (
            logging.INFO,
            "circuit breaker gpt-fake@east: open -> half_open (cool-down of 10s passed)",
        ),
        (logging.INFO, "circuit breaker gpt-fake@east: half_open -> closed (trial succeeded)"),
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"consecutive_failures": 0},
        {"error_rate": 1.5},
        {"min_requests": 0},
        {"window_s": 0.0},
        {"cooldown_s": -1.0},
        {"half_open_trials": 0},
    ],
)
def test_breaker_settings_reject_nonsense(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        BreakerSettings(**overrides)


# --- latency ---------------------------------------------------------------------------------


def test_first_observation_initialises_the_ewma_then_it_smooths() -> None:
    tracker = LatencyTracker(smoothing=0.5)
    assert (tracker.ewma_ttft_s, tracker.ewma_total_s) == (None, None)

    tracker.observe(ttft_s=1.0, total_s=2.0)
    assert (tracker.ewma_ttft_s, tracker.ewma_total_s) == (1.0, 2.0)

    tracker.observe(ttft_s=3.0, total_s=4.0)
    assert (tracker.ewma_ttft_s, tracker.ewma_total_s) == (2.0, 3.0)

    tracker.observe(ttft_s=0.0, total_s=0.0)
    assert (tracker.ewma_ttft_s, tracker.ewma_total_s) == (1.0, 1.5)
    assert tracker.samples == 3


def test_p95_is_none_until_eight_samples() -> None:
    tracker = LatencyTracker()
    for ttft_s in range(1, 8):
        tracker.observe(float(ttft_s), 10.0)
    assert tracker.p95_ttft_s is None

    tracker.observe(8.0, 10.0)
    assert tracker.p95_ttft_s == 8.0  # nearest rank: ceil(0.95 * 8) = 8th of 8


def test_p95_is_the_nearest_rank_of_a_known_sequence() -> None:
    tracker = LatencyTracker(sample_size=64)
    values = [float(v) for v in range(1, 21)]
    random.Random(7).shuffle(values)
    for ttft_s in values:
        tracker.observe(ttft_s, 2 * ttft_s)

    assert tracker.p95_ttft_s == 19.0  # ceil(0.95 * 20) = 19th of 20

    for ttft_s in range(21, 101):
        tracker.observe(float(ttft_s), 1.0)
    assert tracker.p95_ttft_s == 97.0  # the last 64 are 37..100; ceil(0.95 * 64) = 61st


def test_ring_buffer_forgets_old_samples() -> None:
    tracker = LatencyTracker(sample_size=10)
    for _ in range(10):
        tracker.observe(100.0, 100.0)
    assert tracker.p95_ttft_s == 100.0

    for _ in range(10):
        tracker.observe(1.0, 1.0)

    assert tracker.p95_ttft_s == 1.0
    assert tracker.samples == 20


def test_p95_is_recomputed_only_when_samples_arrive() -> None:
    tracker = LatencyTracker(sample_size=10)
    for ttft_s in range(1, 11):
        tracker.observe(float(ttft_s), 1.0)
    assert tracker.p95_ttft_s == tracker.p95_ttft_s == 10.0

    tracker.observe(50.0, 1.0)

    assert tracker.p95_ttft_s == 50.0
    assert tracker.statistics().p95_ttft_s == 50.0


def test_a_call_cut_short_is_a_lower_bound_on_latency() -> None:
    tracker = LatencyTracker(smoothing=0.5)
    tracker.cut_short(2.0)
    assert tracker.ewma_total_s == 2.0  # no history: at least this slow
    assert tracker.samples == 0  # not a measurement

    tracker.cut_short(1.0)
    assert tracker.ewma_total_s == 2.0  # below the estimate: tells nothing new
    tracker.cut_short(4.0)
    assert tracker.ewma_total_s == 3.0  # above it: the estimate moves up

    tracker.observe(0.5, 1.0)
    assert tracker.ewma_total_s == 1.0  # a real measurement replaces the bound


def test_a_call_cut_short_early_with_no_history_does_not_look_fast() -> None:
    tracker = LatencyTracker()
    tracker.cut_short(0.005)  # a 5xx in 5 ms, or a caller cancelling at 5 ms
    assert tracker.ewma_total_s == NEUTRAL_LATENCY_S
    assert tracker.samples == 0
    assert not tracker.claim_probe()  # measured (pessimistically): no optimism left


def test_one_probe_claim_at_a_time_until_a_measurement() -> None:
    tracker = LatencyTracker()
    assert tracker.claim_probe()
    assert tracker.probing
    assert not tracker.claim_probe()  # taken
    tracker.end_probe()
    assert not tracker.probing
    assert tracker.claim_probe()  # given back, claimable again
    tracker.observe(0.1, 0.2)
    tracker.end_probe()
    assert not tracker.claim_probe()  # measured: nothing to probe


def test_in_flight_counts_started_minus_finished() -> None:
    tracker = LatencyTracker()
    tracker.started()
    tracker.started()
    tracker.finished()
    assert tracker.in_flight == 1

    tracker.finished()
    tracker.finished()  # an extra finish does not drive the count negative
    assert tracker.statistics().in_flight == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"smoothing": 0.0}, {"smoothing": 1.5}, {"sample_size": 7}],
)
def test_latency_tracker_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LatencyTracker(**kwargs)


# --- retry budget ----------------------------------------------------------------------------


def _spend_all(budget: RetryBudget) -> int:
    granted = 0
    while budget.try_spend():
        granted += 1
    return granted


def test_retry_budget_allows_ratio_of_requests_plus_the_minimum() -> None:
    budget = RetryBudget(ratio=0.1, min_retries_per_window=3, window_s=10.0, clock=FakeClock())
    for _ in range(100):
        budget.on_request()

    assert _spend_all(budget) == 13

    statistics = budget.statistics()
    assert (statistics.requests_in_window, statistics.retries_in_window) == (100, 13)
    assert statistics.refused_total == 1


def test_a_refunded_retry_is_given_back_and_never_below_zero() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_retries_per_window=1, window_s=10.0, clock=clock)
    assert budget.try_spend()
    assert not budget.try_spend()
    budget.refund()  # the retry granted was not made
    assert budget.statistics().retries_in_window == 0
    clock.advance(3)  # a later bucket: the refund still finds the retry
    assert budget.try_spend()
    clock.advance(3)
    budget.refund()
    budget.refund()  # nothing left to give back: a no-op
    assert budget.statistics().retries_in_window == 0
    assert budget.try_spend()


def test_retry_budget_allows_only_the_minimum_without_traffic() -> None:
    budget = RetryBudget(ratio=0.1, min_retries_per_window=3, clock=FakeClock())

    assert _spend_all(budget) == 3


@pytest.mark.parametrize(("ratio", "requests", "expected"), [(0.1, 30, 3), (0.29, 100, 29)])
def test_retry_budget_is_not_fooled_by_float_rounding(
    ratio: float, requests: int, expected: int
) -> None:
    budget = RetryBudget(ratio=ratio, min_retries_per_window=0, clock=FakeClock())
    for _ in range(requests):
        budget.on_request()

    assert _spend_all(budget) == expected


def test_retry_budget_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_retries_per_window=3, window_s=10.0, clock=clock)
    for _ in range(100):
        budget.on_request()
    assert _spend_all(budget) == 13

    clock.advance(10.0)

    statistics = budget.statistics()
    assert (statistics.requests_in_window, statistics.retries_in_window) == (0, 0)
    assert _spend_all(budget) == 3


def test_retry_budget_forgets_a_retry_when_its_bucket_leaves_the_window() -> None:
    clock = FakeClock()  # monotonic 1000.0: a bucket edge for 1 s buckets
    budget = RetryBudget(ratio=0.0, min_retries_per_window=1, window_s=10.0, clock=clock)
    clock.advance(0.5)
    assert budget.try_spend()

    seen = []
    for _ in range(44):
        clock.advance(0.25)
        seen.append((clock.monotonic_s() - 1000.0, budget.statistics().retries_in_window))

    # Counted while its bucket [1000, 1001) is among the last ten, i.e. for 9.5 s here.
    assert all(retries == (1 if elapsed_s < 10.0 else 0) for elapsed_s, retries in seen)
    assert budget.try_spend()


_WINDOW_S = 10.0
# Whole quarter seconds, so times and bucket edges (1 s apart) are exact in binary.
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("requests"), st.integers(1, 20)),
        st.tuples(st.just("retry"), st.just(0)),
        # Mostly small steps, so events meet the window's edge bucket by bucket.
        st.tuples(st.just("advance"), st.integers(0, 6) | st.integers(0, 48)),
    ),
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 1.0]),
    minimum=st.integers(0, 5),
    steps=_steps,
)
def test_retry_budget_holds_within_bucket_granularity(
    ratio: float, minimum: int, steps: list[tuple[str, int]]
) -> None:
    """The bound the budget guarantees, checked at every decision.

    With ten buckets the budget sees between 0.9 and 1.0 of window_s of history, so:
    - a grant at time t leaves the retries of (t - 0.9 W, t] within
      floor(ratio x requests of (t - W, t]) + min; checking this at each span's last
      grant bounds the retries of every span of at most 0.9 W;
    - a refusal at t means the retries of (t - W, t] already reach
      floor(ratio x requests of (t - 0.9 W, t]) + min: it never refuses spuriously.
    """
    clock = FakeClock()
    budget = RetryBudget(
        ratio=ratio, min_retries_per_window=minimum, window_s=_WINDOW_S, clock=clock
    )
    exact_ratio = Fraction(str(ratio))
    requests_at: list[float] = []
    retries_at: list[float] = []

    def count(times: list[float], span_s: float) -> int:
        now = clock.monotonic_s()
        return sum(1 for t in times if now - span_s < t <= now)

    def limit(requests: int) -> int:
        return math.floor(exact_ratio * requests) + minimum

    for kind, amount in steps:
        if kind == "requests":
            for _ in range(amount):
                budget.on_request()
                requests_at.append(clock.monotonic_s())
        elif kind == "advance":
            clock.advance(amount * 0.25)
        elif budget.try_spend():
            retries_at.append(clock.monotonic_s())
            assert count(retries_at, 0.9 * _WINDOW_S) <= limit(count(requests_at, _WINDOW_S))
        else:
            assert count(retries_at, _WINDOW_S) >= limit(count(requests_at, 0.9 * _WINDOW_S))


def test_a_straggler_neither_frees_a_trial_slot_nor_closes_the_breaker() -> None:
    clock = FakeClock()
    breaker = _breaker(clock, consecutive_failures=1, cooldown_s=10.0, half_open_trials=1)
    straggler = breaker.on_attempt_start()  # a long stream started while closed
    _trip(breaker)
    clock.advance(10.0)
    breaker.on_attempt_start()  # the one half-open trial

    breaker.on_abandoned(straggler)
    assert not breaker.allows()
    breaker.on_success(straggler)
    assert breaker.state is BreakerState.HALF_OPEN
