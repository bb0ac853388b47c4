"""Wall-clock time behind a seam, so budget windows can be tested without sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Tells the current wall-clock time."""

    def now_s(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    """The real clock."""

    def now_s(self) -> float:
        return time.time()
