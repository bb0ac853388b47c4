"""Per-deployment live health: a circuit breaker, latency tracking and a retry budget.

The router reads this state on every request, so every read is O(1) and cheap:
counts over time live in a few fixed buckets that slide with the clock (never a
list of timestamps), and the latency percentile is recomputed only when new
samples arrived since the last read. Nothing here suspends, so under asyncio
each call is atomic; time comes from an injected `Clock` (monotonic seconds).

Invariants:
- `CircuitBreaker.allows()` is a pure check. Transitions happen only in
  `on_attempt_start()` (OPEN -> HALF_OPEN once the cool-down has passed) and in
  the verdicts `on_success()` / `on_failure()`. Every transition is logged with
  the breaker's name, both states and the reason.
- While HALF_OPEN, at most `half_open_trials` trials are in flight, provided
  each caller calls `on_attempt_start()` in the same synchronous step in which
  `allows()` said yes, and ends each attempt with exactly one of
  `on_success()`, `on_failure()` or `on_abandoned()`.
- A verdict that arrives while OPEN belongs to an attempt started before the
  breaker opened; it is ignored, so a slow straggler can neither close nor
  re-open the breaker.
- `RetryBudget.try_spend()` grants a retry only if, counted over its bucketed
  window (the current bucket and the nine before it: between 0.9 and 1.0 of
  `window_s` of history), retries including this one stay within
  floor(ratio x requests) + min_retries_per_window. Hence the retries granted in
  any span of at most 0.9 x window_s never exceed that bound computed from the
  requests of the window_s before the span's last retry; and a retry is never
  refused while the retries of the last full window_s plus one fit the bound
  computed from the requests of the last 0.9 x window_s. `refund()` uncounts
  a granted retry that was not made; it only lowers the count, so both hold.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum

from faregate_server.clock import Clock
from faregate_server.config.schema import BreakerSettings

_log = logging.getLogger(__name__)

_WINDOW_BUCKETS = 10
_MIN_P95_SAMPLES = 8
# Keeps float products such as 0.1 x 30 (3.0000000000000004) or 0.29 x 100
# (28.999999999999996) on the intended side of a threshold.
_FLOAT_TOLERANCE = 1e-9
# What a model is taken to need, in seconds, while nothing it answered says
# better: neither fast nor hopeless. A model with no history whose call ended
# without an answer (a fast 5xx, a cancellation) is judged at least this slow,
# so an early failure or a caller's quick cancel cannot make it look fast.
NEUTRAL_LATENCY_S = 1.0


class _SlidingCount:
    """A count of events over the last `window_s`, in `_WINDOW_BUCKETS` buckets.

    Bucket k holds the events whose monotonic time t has floor(t / bucket_s) == k.
    The count covers the current bucket and the `_WINDOW_BUCKETS - 1` before it,
    so an event is counted for between 0.9 and 1.0 of `window_s` after it happened.
    A running total makes reads O(1); advancing clears at most every bucket once.
    """

    __slots__ = ("_bucket_s", "_clock", "_counts", "_head", "_total")

    def __init__(self, window_s: float, clock: Clock) -> None:
        self._clock = clock
        self._bucket_s = window_s / _WINDOW_BUCKETS
        self._counts = [0] * _WINDOW_BUCKETS
        self._head = self._bucket_now()
        self._total = 0

    def _bucket_now(self) -> int:
        return math.floor(self._clock.monotonic_s() / self._bucket_s)

    def _advance(self) -> int:
        """Drops the buckets that slid out of the window; returns the current slot."""
        bucket = self._bucket_now()
        if bucket > self._head:
            if bucket - self._head >= _WINDOW_BUCKETS:
                self._counts = [0] * _WINDOW_BUCKETS
                self._total = 0
            else:
                for expired in range(self._head + 1, bucket + 1):
                    slot = expired % _WINDOW_BUCKETS
                    self._total -= self._counts[slot]
                    self._counts[slot] = 0
            self._head = bucket
        # A monotonic clock never runs back; if one did, events land in the newest bucket.
        return self._head % _WINDOW_BUCKETS

    def add(self) -> None:
        """Counts one event now."""
        self._counts[self._advance()] += 1
        self._total += 1

    def remove(self) -> None:
        """Uncounts the newest event still in the window, if any (an undo of `add`)."""
        head = self._advance()
        for back in range(_WINDOW_BUCKETS):
            index = (head - back) % _WINDOW_BUCKETS
            if self._counts[index]:
                self._counts[index] -= 1
                self._total -= 1
                return

    def total(self) -> int:
        """Events in the window ending now."""
        self._advance()
        return self._total

    def clear(self) -> None:
        """Forgets every event."""
        self._counts = [0] * _WINDOW_BUCKETS
        self._total = 0


class BreakerState(StrEnum):
    CLOSED = "closed"
    """Requests flow; outcomes are counted."""
    OPEN = "open"
    """Requests are refused until the cool-down passes."""
    HALF_OPEN = "half_open"
    """A few trial requests probe whether the deployment recovered."""


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    state: BreakerState
    """The effective state: OPEN reads as HALF_OPEN once its cool-down has passed."""
    consecutive_failures: int
    window_requests: int
    """Outcomes counted over the error-rate window; only closed-state outcomes count."""
    window_failures: int
    opened_total: int
    """How many times the breaker has opened, re-openings from half-open included."""
    opened_at_s: float | None
    """Monotonic time the current trip began; None while closed."""
    trials_in_flight: int


@dataclass(frozen=True, slots=True)
class BreakerTicket:
    """Issued per attempt: which state generation it started in, and whether
    it is a half-open trial."""

    generation: int
    trial: bool


class CircuitBreaker:
    """Stops sending requests to a failing deployment, then probes it carefully.

    Use: `if breaker.allows(): ticket = breaker.on_attempt_start()` in one
    synchronous step, then exactly one of `on_success(ticket)`,
    `on_failure(ticket)`, `on_abandoned(ticket)`.
    """

    def __init__(self, name: str, settings: BreakerSettings, clock: Clock) -> None:
        self._name = name
        self._settings = settings
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._outcomes = _SlidingCount(settings.window_s, clock)
        self._failures = _SlidingCount(settings.window_s, clock)
        self._opened_total = 0
        self._opened_at_s: float | None = None
        self._trials_in_flight = 0
        # Bumped on every transition: a verdict whose ticket is older belongs to
        # an attempt started under another state, and is ignored.
        self._generation = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def state(self) -> BreakerState:
        """The effective state: OPEN reads as HALF_OPEN once its cool-down has passed."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    def _cooled_down(self) -> bool:
        assert self._opened_at_s is not None
        return self._clock.monotonic_s() - self._opened_at_s >= self._settings.cooldown_s

    def allows(self) -> bool:
        """Whether a request may be sent now; changes nothing."""
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            # Once cooled down it counts as half-open with no trial in flight yet.
            return self._cooled_down()
        return self._trials_in_flight < self._settings.half_open_trials

    def allows_in_s(self) -> float:
        """How long until `allows()` may say yes: 0 if it does now, the rest of
        the cool-down while open, infinity (not known) while half-open with
        every trial taken, since the trials' verdicts decide."""
        state = self._state
        if state is BreakerState.CLOSED:
            return 0.0
        if state is BreakerState.OPEN:
            assert self._opened_at_s is not None
            elapsed_s = self._clock.monotonic_s() - self._opened_at_s
            return max(0.0, self._settings.cooldown_s - elapsed_s)
        return 0.0 if self._trials_in_flight < self._settings.half_open_trials else math.inf

    def on_attempt_start(self) -> BreakerTicket:
        """Registers an attempt that `allows()` just admitted; its verdict takes the ticket."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            self._transition(
                BreakerState.HALF_OPEN, f"cool-down of {self._settings.cooldown_s:g}s passed"
            )
        trial = self._state is BreakerState.HALF_OPEN
        if trial:
            self._trials_in_flight += 1
        return BreakerTicket(self._generation, trial)

    def on_success(self, ticket: BreakerTicket) -> None:
        """Records a successful attempt."""
        if ticket.generation != self._generation:
            return  # started under an earlier state: a straggler's verdict
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._outcomes.add()
        elif ticket.trial:
            self._close("trial succeeded")

    def on_failure(self, ticket: BreakerTicket) -> None:
        """Records a failed attempt (the deployment's fault, not the caller's)."""
        if ticket.generation != self._generation:
            return
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            self._outcomes.add()
            self._failures.add()
            self._open_if_tripped()
        elif ticket.trial:
            self._open("trial failed")

    def on_abandoned(self, ticket: BreakerTicket) -> None:
        """Records an attempt that ended without a verdict, e.g. its caller cancelled."""
        if ticket.trial and ticket.generation == self._generation and self._trials_in_flight:
            self._trials_in_flight -= 1

    def _open_if_tripped(self) -> None:
        settings = self._settings
        if self._consecutive_failures >= settings.consecutive_failures:
            self._open(f"{self._consecutive_failures} consecutive failures")
            return
        outcomes = self._outcomes.total()
        if outcomes < settings.min_requests:
            return
        failures = self._failures.total()
        if failures + _FLOAT_TOLERANCE >= settings.error_rate * outcomes:
            self._open(
                f"{failures} of {outcomes} requests failed in the last {settings.window_s:g}s"
            )

    def _open(self, why: str) -> None:
        self._opened_total += 1
        self._opened_at_s = self._clock.monotonic_s()
        self._transition(BreakerState.OPEN, why)

    def _close(self, why: str) -> None:
        self._consecutive_failures = 0
        self._outcomes.clear()
        self._failures.clear()
        self._opened_at_s = None
        self._transition(BreakerState.CLOSED, why)

    def _transition(self, new: BreakerState, why: str) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._trials_in_flight = 0
        level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
        _log.log(level, "circuit breaker %s: %s -> %s (%s)", self._name, old, new, why)

    def statistics(self) -> BreakerStatistics:
        return BreakerStatistics(
            state=self.state,
            consecutive_failures=self._consecutive_failures,
            window_requests=self._outcomes.total(),
            window_failures=self._failures.total(),
            opened_total=self._opened_total,
            opened_at_s=self._opened_at_s,
            trials_in_flight=self._trials_in_flight,
        )


@dataclass(frozen=True, slots=True)
class LatencyStatistics:
    ewma_ttft_s: float | None
    ewma_total_s: float | None
    p95_ttft_s: float | None
    samples: int
    """Observations ever made."""
    in_flight: int


class LatencyTracker:
    """Smoothed and tail latency of one deployment, plus its requests in flight."""

    def __init__(self, smoothing: float = 0.2, sample_size: int = 64) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], not {smoothing}")
        if sample_size < _MIN_P95_SAMPLES:
            raise ValueError(f"sample_size must be >= {_MIN_P95_SAMPLES}, not {sample_size}")
        self._smoothing = smoothing
        self._ewma_ttft_s: float | None = None
        self._ewma_total_s: float | None = None
        self._recent_ttft_s = [0.0] * sample_size
        self._samples = 0
        self._p95_ttft_s: float | None = None
        self._p95_stale = False
        self._in_flight = 0
        self._probing = False

    def observe(self, ttft_s: float, total_s: float) -> None:
        """Records one completed call's time to first token and total time."""
        if self._ewma_ttft_s is None or self._ewma_total_s is None:
            self._ewma_ttft_s = ttft_s
            self._ewma_total_s = total_s
        else:
            self._ewma_ttft_s += self._smoothing * (ttft_s - self._ewma_ttft_s)
            self._ewma_total_s += self._smoothing * (total_s - self._ewma_total_s)
        ring = self._recent_ttft_s
        ring[self._samples % len(ring)] = ttft_s
        self._samples += 1
        self._p95_stale = True

    def cut_short(self, elapsed_s: float) -> None:
        """Records a call that ended without an answer after elapsed_s: it
        failed (the upstream's fault), stalled, or was cancelled.

        Its latency is unknown but at least elapsed_s: a smoothed total below
        that is moved toward it, one above is left alone. With no history it
        is set to elapsed_s but never below `NEUTRAL_LATENCY_S`: a 5xx in 5 ms
        or a caller cancelling at 5 ms says nothing about how fast the model
        answers, and must not make it look fast. So a model whose calls never
        finish (always outrun by a hedge, say) or always fail is measured out
        instead of looking untried, and tried first, for ever.
        """
        ewma_s = self._ewma_total_s
        if ewma_s is None:
            self._ewma_total_s = max(elapsed_s, NEUTRAL_LATENCY_S)
        elif elapsed_s > ewma_s:
            self._ewma_total_s = ewma_s + self._smoothing * (elapsed_s - ewma_s)

    @property
    def probing(self) -> bool:
        """Whether an optimistic first call to this unmeasured model is leased."""
        return self._probing

    def claim_probe(self) -> bool:
        """Claims the one optimistic probe of a model with no history; False if
        it is measured or the probe is already claimed. Synchronous, so a
        burst selecting at once sees the claim before any of them awaits."""
        if self._ewma_total_s is not None or self._probing:
            return False
        self._probing = True
        return True

    def end_probe(self) -> None:
        """Gives the probe claim back, however its lease ended (used or not)."""
        self._probing = False

    @property
    def ewma_ttft_s(self) -> float | None:
        """Exponentially smoothed time to first token; None before any observation."""
        return self._ewma_ttft_s

    @property
    def ewma_total_s(self) -> float | None:
        """Exponentially smoothed total call time; None before any observation."""
        return self._ewma_total_s

    @property
    def p95_ttft_s(self) -> float | None:
        """Nearest-rank 95th percentile of the recent TTFTs; None below 8 samples."""
        if self._p95_stale:
            self._p95_stale = False
            held = min(self._samples, len(self._recent_ttft_s))
            if held >= _MIN_P95_SAMPLES:
                ordered = sorted(self._recent_ttft_s[:held])
                self._p95_ttft_s = ordered[math.ceil(0.95 * held) - 1]
        return self._p95_ttft_s

    @property
    def samples(self) -> int:
        """Observations ever made (the percentile uses the most recent sample_size)."""
        return self._samples

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def started(self) -> None:
        """Counts a call to this deployment as in flight."""
        self._in_flight += 1

    def finished(self) -> None:
        """Counts a call as no longer in flight, however it ended."""
        # Clamped: a double finish must not make the deployment look emptier than idle.
        self._in_flight = max(0, self._in_flight - 1)

    def statistics(self) -> LatencyStatistics:
        return LatencyStatistics(
            ewma_ttft_s=self._ewma_ttft_s,
            ewma_total_s=self._ewma_total_s,
            p95_ttft_s=self.p95_ttft_s,
            samples=self._samples,
            in_flight=self._in_flight,
        )


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    requests_in_window: int
    retries_in_window: int
    refused_total: int


class RetryBudget:
    """Caps retries to a share of recent traffic, so retries cannot snowball (Finagle-style).

    Over the window, retries may reach floor(ratio x first attempts) plus
    min_retries_per_window, which keeps retrying possible at low traffic.
    """

    def __init__(
        self,
        *,
        ratio: float = 0.1,
        min_retries_per_window: int = 3,
        window_s: float = 10.0,
        clock: Clock,
    ) -> None:
        if ratio < 0.0:
            raise ValueError(f"ratio must be >= 0, not {ratio}")
        if min_retries_per_window < 0:
            raise ValueError(f"min_retries_per_window must be >= 0, not {min_retries_per_window}")
        if not window_s > 0.0:
            raise ValueError(f"window_s must be > 0, not {window_s}")
        self._ratio = ratio
        self._min_retries = min_retries_per_window
        self._requests = _SlidingCount(window_s, clock)
        self._retries = _SlidingCount(window_s, clock)
        self._refused_total = 0

    def on_request(self) -> None:
        """Records a first attempt (not a retry)."""
        self._requests.add()

    def try_spend(self) -> bool:
        """Records a retry and returns True if the budget allows one now, else False."""
        allowed = (
            math.floor(self._ratio * self._requests.total() + _FLOAT_TOLERANCE) + self._min_retries
        )
        if self._retries.total() < allowed:
            self._retries.add()
            return True
        self._refused_total += 1
        return False

    def refund(self) -> None:
        """Gives back a retry `try_spend` granted that was not made (no lease
        could be had for it): only lowers the count, so the bound holds."""
        self._retries.remove()

    def statistics(self) -> RetryBudgetStatistics:
        return RetryBudgetStatistics(
            requests_in_window=self._requests.total(),
            retries_in_window=self._retries.total(),
            refused_total=self._refused_total,
        )
