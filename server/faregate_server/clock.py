"""Time behind a seam, so windows, cool-downs and breakers are tested without sleeping.

One clock per purpose: `now_s` dates things (spend records, calendar
windows, log lines); `monotonic_s` runs cool-downs, breakers and windows of
health; `perf_s` measures how long something took (latencies, service
times). Deadlines are the one exception: they live on the event loop's
clock, which asyncio's timeouts and gRPC's `time_remaining` are read
against. The loop's clock is no stopwatch: uvloop's ticks in whole
milliseconds."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Tells the current wall-clock time."""

    def now_s(self) -> float:
        """Seconds since the Unix epoch (for calendar windows)."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never jumps (for cool-downs and breakers)."""
        ...

    def perf_s(self) -> float:
        """Seconds on the finest clock that never jumps, for measuring durations."""
        ...


class SystemClock:
    """The real clock."""

    def now_s(self) -> float:
        return time.time()

    def monotonic_s(self) -> float:
        return time.monotonic()

    def perf_s(self) -> float:
        return time.perf_counter()
