"""Calendar windows in UTC, shared by budgets and limit pools."""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime

from faregate_server.config import Window

_SECONDS = {Window.MINUTE: 60, Window.HOURLY: 3600, Window.DAILY: 86400}


def window_start_s(window: Window, now_s: float) -> float:
    """The Unix time at which the window that contains now_s began (0 for NONE)."""
    if window is Window.NONE:
        return 0.0
    length_s = _SECONDS.get(window)
    if length_s is not None:
        return (now_s // length_s) * length_s
    now = datetime.fromtimestamp(now_s, UTC)
    return float(calendar.timegm((now.year, now.month, 1, 0, 0, 0)))


def next_reset_s(window: Window, now_s: float) -> float:
    """The Unix time at which the window that contains now_s ends (inf for NONE)."""
    if window is Window.NONE:
        return math.inf
    length_s = _SECONDS.get(window)
    if length_s is not None:
        return (now_s // length_s + 1) * length_s
    now = datetime.fromtimestamp(now_s, UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))
