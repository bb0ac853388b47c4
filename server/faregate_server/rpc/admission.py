"""Server-wide admission control: past what this process can serve, a new call
is refused at once, never queued.

Two guards, checked at the very start of every Route and StreamRoute:
- concurrency: at most `server.max_concurrent_calls` calls in flight. The
  count is the drain's (drain.py tracks every call for shutdown anyway), so
  calls are counted once;
- loop lag: a background probe, owned by the server's lifetime, sleeps a
  short interval and measures how much later than asked the event loop woke
  it. Once it has woken later than `server.loop_lag_limit_s` twice within
  a second (once alone is a stall that has passed), the loop is too busy to
  serve one more call well (every call in flight already waits that long at
  each step), and new calls are refused until a second passes with no late
  wake-up.

A refused call ends with UNAVAILABLE (SERVER_OVERLOADED), ErrorInfo metadata
`guard` ("concurrency" or "loop_lag"), a RetryInfo and the
grpc-retry-pushback-ms trailer. The check comes before the credential is
read, the request validated or anything reserved: a refusal changes nothing
(no reservation, no charge, no principal slot) and costs an integer compare
and a bool test, so a flood, unauthenticated or not, is shed for about what
gRPC itself spends on a call. Calls already admitted are never cut here.

What this cannot shorten is the wait before gRPC hands a call over: the
grpc.aio server accepts one call at a time, a few loop turns each, so while
the loop lags calls queue inside gRPC, out of any handler's reach. The
guards exist to stop the loop getting there: refused calls add almost no
work, so the calls in flight finish and the lag falls.

The probe is the only writer of the lag state; the check only reads it. Each
refused call has its request log line and counts in the metrics; the
operator log gets one line when a guard starts refusing and one when it
stops, with how many it refused, never one per call.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from enum import StrEnum

from faregate_server.config.schema import ServerConfig
from faregate_server.errors import ServerOverloaded
from faregate_server.rpc.drain import Drain

logger = logging.getLogger(__name__)

# What a refused caller is told to wait, at least: a slot frees, or the loop
# catches up, about as fast as calls end.
_RETRY_AFTER_S = 1.0
# How often the probe measures, at most: often enough that a lag that passed
# is noticed within a tenth of a second, rarely enough to cost nothing.
_MAX_PROBE_INTERVAL_S = 0.1
_MIN_PROBE_INTERVAL_S = 0.01
# How close together two late wake-ups must be to count as lag, and how long
# the guard holds after the last one.
_LAG_WINDOW_S = 1.0


class Guard(StrEnum):
    """Which admission limit refused a call (the `guard` ErrorInfo metadata)."""

    CONCURRENCY = "concurrency"
    LOOP_LAG = "loop_lag"


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    in_flight: int
    """Route and StreamRoute calls being served now."""
    max_concurrent_calls: int
    loop_lag_s: float
    """How late the probe's last wake-up was."""
    lagging: bool
    """Whether new calls are being refused for loop lag now."""
    refused_concurrency: int
    """Calls refused over the concurrency cap since the start."""
    refused_loop_lag: int
    """Calls refused for loop lag since the start."""


class AdmissionControl:
    """The two guards; `check()` per call, `watch_loop_lag()` as a background task."""

    def __init__(self, settings: ServerConfig, drain: Drain) -> None:
        self._drain = drain
        self._max_calls = settings.max_concurrent_calls
        self._lag_limit_s = settings.loop_lag_limit_s
        # Half the limit, so a lag over it is seen within one limit's time.
        self._probe_interval_s = _MAX_PROBE_INTERVAL_S
        if settings.loop_lag_limit_s > 0:
            self._probe_interval_s = min(
                _MAX_PROBE_INTERVAL_S, max(_MIN_PROBE_INTERVAL_S, settings.loop_lag_limit_s / 2)
            )
        self._lag_s = 0.0
        self._lagging = False
        # When the probe last woke later than the limit, the time before, and
        # how late it was that last time (what a refusal reports).
        self._last_late_s = -math.inf
        self._previous_late_s = -math.inf
        self._late_lag_s = 0.0
        self._saturated = False
        self._refused_concurrency = 0
        self._refused_loop_lag = 0
        # Refusals counted when the current episode of refusing began, for
        # the line that ends it.
        self._lag_episode_start = 0
        self._cap_episode_start = 0
        self._over_cap_message = (
            f"faregate is serving its cap of {self._max_calls} calls"
            " (server.max_concurrent_calls); retry later, or on another replica"
        )
        self._over_cap_limit = str(self._max_calls)

    def check(self) -> None:
        """Admits a new call, or refuses it at once.

        Raises:
            ServerOverloaded: the process is at its concurrency cap, or its
                event loop lags past the limit.
        """
        if self._drain.in_flight >= self._max_calls:
            self._refuse_over_cap()
        if self._lagging:
            self._refuse_for_lag()

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            in_flight=self._drain.in_flight,
            max_concurrent_calls=self._max_calls,
            loop_lag_s=self._lag_s,
            lagging=self._lagging,
            refused_concurrency=self._refused_concurrency,
            refused_loop_lag=self._refused_loop_lag,
        )

    async def watch_loop_lag(self) -> None:
        """Measures the event loop's lag until cancelled (the server's lifetime owns it)."""
        loop = asyncio.get_running_loop()
        interval_s = self._probe_interval_s
        while True:
            due_s = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            now_s = loop.time()
            self._observe(max(0.0, now_s - due_s), now_s)

    def _observe(self, lag_s: float, now_s: float) -> None:
        self._lag_s = lag_s
        if 0 < self._lag_limit_s < lag_s:
            self._previous_late_s, self._last_late_s = self._last_late_s, now_s
            self._late_lag_s = lag_s
        # Two late wake-ups within the window: one alone is a single stall (a
        # long callback, a GC pause) that is already over, not an overload.
        # A saturated loop wakes the probe late often but not every time (its
        # iterations run long and short by turns), so the guard holds until
        # a whole window has passed with no late wake-up.
        lagging = (
            now_s - self._last_late_s <= _LAG_WINDOW_S
            and self._last_late_s - self._previous_late_s <= _LAG_WINDOW_S
        )
        if lagging and not self._lagging:
            self._lag_episode_start = self._refused_loop_lag
            logger.warning(
                "event loop %.0f ms late (over server.loop_lag_limit_s, %.0f ms):"
                " refusing new calls with SERVER_OVERLOADED until it catches up",
                lag_s * 1000,
                self._lag_limit_s * 1000,
            )
        elif self._lagging and not lagging:
            logger.info(
                "event loop caught up (%.0f ms late): admitting new calls again;"
                " %d refused meanwhile",
                lag_s * 1000,
                self._refused_loop_lag - self._lag_episode_start,
            )
        self._lagging = lagging
        if self._saturated and self._drain.in_flight < self._max_calls:
            self._saturated = False
            logger.info(
                "under server.max_concurrent_calls (%d) again: admitting new calls;"
                " %d refused meanwhile",
                self._max_calls,
                self._refused_concurrency - self._cap_episode_start,
            )

    def _refuse_over_cap(self) -> None:
        self._refused_concurrency += 1
        if not self._saturated:
            self._saturated = True
            self._cap_episode_start = self._refused_concurrency - 1
            logger.warning(
                "%d calls in flight, the cap (server.max_concurrent_calls):"
                " refusing new calls with SERVER_OVERLOADED",
                self._max_calls,
            )
        raise ServerOverloaded(
            self._over_cap_message,
            _RETRY_AFTER_S,
            guard=Guard.CONCURRENCY.value,
            maxConcurrentCalls=self._over_cap_limit,
        )

    def _refuse_for_lag(self) -> None:
        self._refused_loop_lag += 1
        lag_ms = round(self._late_lag_s * 1000)
        raise ServerOverloaded(
            f"faregate's event loop runs up to {lag_ms} ms behind (server.loop_lag_limit_s"
            f" is {round(self._lag_limit_s * 1000)} ms); retry later, or on another replica",
            max(_RETRY_AFTER_S, self._late_lag_s),
            guard=Guard.LOOP_LAG.value,
            loopLagMs=str(lag_ms),
        )
