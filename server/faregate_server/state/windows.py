"""Calendar windows in UTC, and the windowed tally budgets and limit pools share.

Every window but the month is a fixed length counted from an anchor: the Unix
epoch for minutes, hours and days, and the first Monday after it for weeks, so
a week runs from Monday 00:00 UTC to the next (ISO 8601 weeks). Every backend
rolls its windows from these two functions alone.
"""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime

from faregate_server.config.schema import Window

_SECONDS = {Window.MINUTE: 60, Window.HOURLY: 3600, Window.DAILY: 86400, Window.WEEKLY: 604800}
# 1970-01-01 was a Thursday: the first Monday 00:00 UTC after it, 4 days on.
# (No anchor is needed for the others: the epoch starts a minute, an hour and a day.)
_ANCHOR_S = {Window.WEEKLY: 4 * 86400}


def window_start_s(window: Window, now_s: float) -> float:
    """The Unix time at which the window that contains now_s began (0 for NONE)."""
    if window is Window.NONE:
        return 0.0
    length_s = _SECONDS.get(window)
    if length_s is not None:
        anchor_s = _ANCHOR_S.get(window, 0)
        return ((now_s - anchor_s) // length_s) * length_s + anchor_s
    now = datetime.fromtimestamp(now_s, UTC)
    return float(calendar.timegm((now.year, now.month, 1, 0, 0, 0)))


def next_reset_s(window: Window, now_s: float) -> float:
    """The Unix time at which the window that contains now_s ends (inf for NONE)."""
    if window is Window.NONE:
        return math.inf
    length_s = _SECONDS.get(window)
    if length_s is not None:
        anchor_s = _ANCHOR_S.get(window, 0)
        return ((now_s - anchor_s) // length_s + 1) * length_s + anchor_s
    now = datetime.fromtimestamp(now_s, UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


class WindowedTally:
    """Use counted per calendar window: `used` returns to zero at each reset,
    `reserved` (held by requests in flight) carries across."""

    __slots__ = ("reserved", "resets_at_s", "used", "window")

    def __init__(self, window: Window, now_s: float) -> None:
        self.window = window
        self.used = 0
        self.reserved = 0
        self.resets_at_s = next_reset_s(window, now_s)

    def roll(self, now_s: float) -> None:
        """Starts a new window once the current one has ended."""
        if now_s >= self.resets_at_s:
            self.used = 0
            self.resets_at_s = next_reset_s(self.window, now_s)

    def rewindow(self, window: Window, now_s: float) -> None:
        """Adopts a window from a reloaded config; use so far is kept."""
        if window is not self.window:
            self.window = window
            self.resets_at_s = next_reset_s(window, now_s)
