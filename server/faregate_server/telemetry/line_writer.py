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
- A full sink is waited for, not a loss: if stderr was inherited
  non-blocking, a write the sink refuses (EAGAIN) or takes only in part is
  continued from where it stopped once poll(2) says the sink takes bytes
  again, so no line is cut or dropped for it. Only a write that fails (a
  closed pipe, a full disk) loses lines, and those are counted.
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
# How long one wait for a full non-blocking sink lasts before the thread
# looks again (a poll that ends early costs nothing).
_POLL_MS = 250

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LineWriterStatistics:
    written_lines: int
    dropped_lines: int
    """Lines refused because the buffer was full, or lost to a failed write."""
    buffered_bytes: int
    """Bytes accepted and not yet written."""
    sink_waits: int
    """Times a non-blocking sink was full and the thread waited for it to
    take bytes again (a reader slower than the log, for a moment)."""


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
        self._sink_waits = 0
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
            return LineWriterStatistics(
                self._written, self._dropped, self._buffered_bytes, self._sink_waits
            )

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
        """Writes the lines in chunks of whole lines, counting each chunk's as
        it goes; returns how many were written."""
        written = 0
        chunk: list[bytes] = []
        chunk_bytes = 0
        for index, line in enumerate(lines):
            if chunk and chunk_bytes + len(line) > _CHUNK_BYTES:
                chunk_written = self._write_chunk(chunk, chunk_bytes)
                written += chunk_written
                if chunk_written < len(chunk):  # the sink failed: the rest is lost too
                    self._count_lost(lines[index:])
                    return written
                chunk, chunk_bytes = [], 0
            chunk.append(line)
            chunk_bytes += len(line)
        if chunk:
            written += self._write_chunk(chunk, chunk_bytes)
        return written

    def _write_chunk(self, chunk: list[bytes], size: int) -> int:
        """Writes the chunk, in one write(2) where the sink takes it whole,
        and counts its lines; returns how many were written whole."""
        data = chunk[0] if len(chunk) == 1 else b"".join(chunk)
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                # A non-blocking sink, full: wait, then go on from where the
                # write stopped, so no line is cut in two.
                self._wait_writable()
            except OSError:
                # A closed or broken sink: what it did not take is lost.
                break
        written = _whole_lines(chunk, size - len(view))
        with self._lock:
            self._buffered_bytes -= size
            self._written += written
            self._dropped += len(chunk) - written
            self._dropped_unreported += len(chunk) - written
        return written

    def _count_lost(self, lines: list[bytes]) -> None:
        with self._lock:
            self._buffered_bytes -= sum(len(line) for line in lines)
            self._dropped += len(lines)
            self._dropped_unreported += len(lines)

    def _wait_writable(self) -> None:
        with self._lock:
            self._sink_waits += 1
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        # A closed reader or fd also ends the wait (POLLERR, POLLHUP, POLLNVAL):
        # the next write then fails and counts its lines lost.
        while not poller.poll(_POLL_MS):
            pass


def _whole_lines(chunk: list[bytes], written_bytes: int) -> int:
    """How many of the chunk's lines lie whole in its first `written_bytes`."""
    whole = 0
    for line in chunk:
        written_bytes -= len(line)
        if written_bytes < 0:
            break
        whole += 1
    return whole
