"""Time behind a seam, so windows, cool-downs and breakers are tested without sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Tells the current wall-clock time."""

    def now_s(self) -> float:
        """Seconds since the Unix epoch (for calendar windows)."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never jumps (for durations and cool-downs)."""
        ...


class SystemClock:
    """The real clock."""

    def now_s(self) -> float:
        return time.time()

    def monotonic_s(self) -> float:
        return time.monotonic()
