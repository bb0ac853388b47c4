"""Lines written to a file descriptor by a thread, through a bounded buffer.

`faregate serve` writes its request log to stderr, which may be a pipe to a
slow reader: the event loop must never wait for it. `LineWriter.write` only
appends a line to a buffer under a lock; a thread of the writer's own takes
what has gathered and writes it. The thread is woken when the buffer stops
being empty, then waits `_GATHER_S` for more to arrive, so under load it
wakes (and takes the GIL) some hundred times a second, not once per line.

Invariants:
- Bounded: lines buffered or in the thread's hands hold at most
  `max_buffered_bytes`. A line that would pass it is dropped and counted,
  and once the sink takes writes again one warning says how many were lost.
- Whole lines, atomic up to PIPE_BUF: each write(2) is at most
  `select.PIPE_BUF` (4 KiB) of whole lines, which a pipe takes in one piece,
  so a line of up to 4 KiB never has bytes of another writer of the same
  pipe (another `--workers` process, the log) inside it. A longer line (a
  prompt, with `log_prompts` on) is written alone, and a pipe may take it in
  pieces: another process's line can land inside it, as it could when
  logging's StreamHandler wrote the request log.
- In order, and nothing buffered is lost at a clean exit: `close` writes
  what is buffered, then ends the thread.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from dataclasses import dataclass

MAX_BUFFERED_BYTES = 8 << 20
"""About 20,000 request lines: seconds of a busy gateway's log."""
_GATHER_S = 0.01
_CHUNK_BYTES = select.PIPE_BUF

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LineWriterStatistics:
    written_lines: int
    dropped_lines: int
    """Lines refused because the buffer was full, or lost to a failed write."""
    buffered_bytes: int
    """Bytes accepted and not yet written."""


class LineWriter:
    """Writes lines to `fd` from a thread; `write` never blocks on the sink."""

    def __init__(self, fd: int, name: str, *, max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        """`name` says whose lines these are, in the warning about dropped ones."""
        self._fd = fd
        self._name = name
        self._max_buffered_bytes = max_buffered_bytes
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._lines: list[bytes] = []
        self._buffered_bytes = 0
        self._written = 0
        self._dropped = 0
        self._dropped_unreported = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="faregate-line-writer", daemon=True)
        self._thread.start()

    def write(self, line: bytes) -> None:
        """Queues one line, its newline included; drops it if the buffer is full."""
        with self._lock:
            if self._buffered_bytes + len(line) > self._max_buffered_bytes or self._closing:
                self._dropped += 1
                self._dropped_unreported += 1
                return
            woken = bool(self._lines)
            self._lines.append(line)
            self._buffered_bytes += len(line)
        if not woken:
            self._wake.set()

    def statistics(self) -> LineWriterStatistics:
        with self._lock:
            return LineWriterStatistics(self._written, self._dropped, self._buffered_bytes)

    def close(self) -> None:
        """Writes what is buffered and ends the thread; later lines are dropped."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._closing:
                # Let more lines gather: one wake-up per batch, not per line.
                self._wake.clear()
                self._wake.wait(_GATHER_S)
            with self._lock:
                lines, self._lines = self._lines, []
                closing = self._closing
                self._wake.clear()
            written = self._write_lines(lines)
            report = 0
            with self._lock:
                self._buffered_bytes -= sum(len(line) for line in lines)
                self._written += written
                self._dropped += len(lines) - written
                self._dropped_unreported += len(lines) - written
                if written:  # the sink takes writes again: say what it missed
                    report, self._dropped_unreported = self._dropped_unreported, 0
            if report:
                logger.warning(
                    "%d %s lines dropped: their reader took them slower than they came",
                    report,
                    self._name,
                )
            if closing:
                return

    def _write_lines(self, lines: list[bytes]) -> int:
        """Writes the lines in chunks of whole lines; returns how many were written."""
        written = 0
        chunk: list[bytes] = []
        chunk_bytes = 0
        for line in lines:
            if chunk and chunk_bytes + len(line) > _CHUNK_BYTES:
                if not self._write_all(b"".join(chunk)):
                    return written
                written += len(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(line)
            chunk_bytes += len(line)
        if chunk and self._write_all(b"".join(chunk)):
            written += len(chunk)
        return written

    def _write_all(self, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # A closed or broken sink: the lines are counted as dropped.
            return False
        return True
