"""A clock tests move by hand, so time-based behaviour is tested without sleeping."""

from __future__ import annotations

import time


class FakeClock:
    def __init__(self, now_s: float = 1_800_000_000.0) -> None:
        self._now_s = now_s
        self._monotonic_s = 1_000.0

    def now_s(self) -> float:
        return self._now_s

    def monotonic_s(self) -> float:
        return self._monotonic_s

    def perf_s(self) -> float:
        """Real: durations are measured, and a test moves windows and
        cool-downs by hand, not the latencies that selection learns from."""
        return time.perf_counter()

    def advance(self, seconds: float) -> None:
        self._now_s += seconds
        self._monotonic_s += seconds
