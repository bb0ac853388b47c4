"""Peak memory of this process (and so of the in-process faregate), from
Linux's /proc: the high-water mark is reset, the code runs, and the growth of
the peak over the resident size before it is the most it held at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class PeakGrowth:
    bytes: int | None = None
    """Peak resident bytes above the start, once the block ended; None where
    the kernel offers no resettable peak."""


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise LookupError(field)


@contextmanager
def peak_rss_growth() -> Iterator[PeakGrowth]:
    """Measures how far the process's resident memory peaked above its start."""
    growth = PeakGrowth()
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current VmRSS
        start = _status_bytes("VmRSS")
    except (OSError, LookupError):
        yield growth
        return
    yield growth
    growth.bytes = _status_bytes("VmHWM") - start
