"""Lines written to a file descriptor by a thread, through a bounded buffer.

`faregate serve` writes its request log to stderr, which may be a pipe to a
slow reader: the event loop must never wait for it. `LineWriter.write` only
appends a line to a buffer under a lock; a thread of the writer's own takes
what has gathered and writes it. The thread is woken when the buffer stops
being empty, then waits `_GATHER_S` for more to arrive, so under load it
wakes (and takes the GIL) some hundred times a second, not once per line.

Invariants:
- Bounded: lines buffered or in the thread's hands hold at most
  `max_buffered_bytes`. A line that would pass it is refused, and counted.
- Every lost line is counted, by cause, in `statistics()` (which the
  request log's counter on /metrics reports): refused (the buffer was full,
  or the writer closed), failed (the sink failed the write) or unwritten
  (still buffered when `close` stopped waiting). A warning says what was
  lost, at most once every `WARNING_INTERVAL_S`, counting all that was lost
  since the last one: under overload the warning, which goes to the same
  congested stderr in `faregate serve`, must not add to it. It is held back
  while a write to the sink would block, so that the thread never waits for
  a stalled reader inside logging (holding its handler's lock, which every
  other log call and logging's own flush at exit would then wait for).
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
- A stalled reader does not keep the process from exiting: `close` waits a
  bounded time for the thread (which may be stuck in a write(2) nobody
  reads), then gives up on it: what is left is counted unwritten, the
  thread counts nothing more, and one last warning says so if the sink
  would take it now.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_BUFFERED_BYTES = 8 << 20
"""About 20,000 request lines: seconds of a busy gateway's log."""
WARNING_INTERVAL_S = 10.0
"""At most one warning of lost lines this often."""
CLOSE_WAIT_S = 5.0
"""How long `close` waits, by default, for the buffered lines to be written."""
_GATHER_S = 0.01
_CHUNK_BYTES = select.PIPE_BUF
# How long one wait for a full non-blocking sink lasts before the thread
# looks again (a poll that ends early costs nothing).
_POLL_MS = 250

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LineWriterStatistics:
    written_lines: int
    refused_lines: int
    """Lines `write` refused: the buffer was full (its reader slower than
    the lines came), or the writer had closed."""
    failed_lines: int
    """Lines lost to a write the sink failed (a closed pipe, a full disk)."""
    unwritten_lines: int
    """Lines still buffered, or in a write the sink had not taken, when
    `close` stopped waiting for them."""
    buffered_bytes: int
    """Bytes accepted and not yet written."""
    sink_waits: int
    """Times a non-blocking sink was full and the thread waited for it to
    take bytes again (a reader slower than the log, for a moment)."""

    @property
    def dropped_lines(self) -> int:
        """Every line lost, whatever the cause."""
        return self.refused_lines + self.failed_lines + self.unwritten_lines


class LineWriter:
    """Writes lines to `fd` from a thread; `write` never blocks on the sink."""

    def __init__(
        self,
        fd: int,
        name: str,
        *,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        """`name` says whose lines these are, in the warning about lost ones;
        `monotonic_s` is the clock that spaces those warnings."""
        self._fd = fd
        self._name = name
        self._max_buffered_bytes = max_buffered_bytes
        self._monotonic_s = monotonic_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._lines: list[bytes] = []
        self._buffered_bytes = 0
        self._written = 0
        self._refused = 0
        self._refused_closed = 0  # of those, after `close`: no overload to warn of
        self._failed = 0
        self._unwritten = 0
        self._pending = 0  # lines accepted and not yet counted written or lost
        self._last_error: OSError | None = None
        self._sink_waits = 0
        # What the last warning counted (lines refused for a full buffer,
        # failed, unwritten), when it came (None: never), and whether one is
        # being written.
        self._warned = (0, 0, 0)
        self._warned_s: float | None = None
        self._warning = False
        self._closing = False
        self._close_wait_s = CLOSE_WAIT_S
        self._abandoned = False  # `close` gave up waiting for the thread
        self._thread = threading.Thread(target=self._run, name="faregate-line-writer", daemon=True)
        self._thread.start()

    def write(self, line: bytes) -> None:
        """Queues one line, its newline included; refuses it if the buffer is full."""
        with self._lock:
            if self._buffered_bytes + len(line) > self._max_buffered_bytes or self._closing:
                self._refused += 1
                if self._closing:
                    self._refused_closed += 1
                return
            woken = bool(self._lines)
            self._lines.append(line)
            self._buffered_bytes += len(line)
            self._pending += 1
        if not woken:
            self._wake.set()

    def statistics(self) -> LineWriterStatistics:
        with self._lock:
            return LineWriterStatistics(
                written_lines=self._written,
                refused_lines=self._refused,
                failed_lines=self._failed,
                unwritten_lines=self._unwritten,
                buffered_bytes=self._buffered_bytes,
                sink_waits=self._sink_waits,
            )

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Writes what is buffered and ends the thread; later lines are refused.

        Waits at most `wait_s` for that: if the sink takes nothing so long
        (a stalled reader), what is left is counted unwritten, the thread is
        left to its write (it is a daemon: it dies with the process), and
        one last warning says so if the sink would take it now.
        """
        with self._lock:
            self._closing = True
            self._close_wait_s = wait_s
        self._wake.set()
        self._thread.join(wait_s)
        if not self._thread.is_alive():
            return
        with self._lock:
            self._abandoned = True
            self._unwritten += self._pending
            self._pending = 0
            self._lines = []
            self._buffered_bytes = 0
        self._warn_of_losses(final=True, abandoning=True)

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
            self._write_lines(lines)
            # Closing: the last word on what was lost, however soon after the last.
            self._warn_of_losses(final=closing)
            if closing or self._abandoned:
                return

    def _warn_of_losses(self, *, final: bool, abandoning: bool = False) -> None:
        """Warns of the lines lost since the last warning, if that was at
        least `WARNING_INTERVAL_S` ago (or `final`) and a write to the sink
        would not block; called by the thread, or by `close` once it gave up
        on the thread (`abandoning`)."""
        now_s = self._monotonic_s()
        with self._lock:
            if not self._warning_due(now_s, final=final, abandoning=abandoning):
                return
        if not _would_not_block(self._fd):
            if abandoning or not final:
                return  # the counts wait for the next warning
            # The thread's last word: worth waiting for, as long as close waits.
            if not self._wait_writable(counted=False):
                return
        with self._lock:
            if not self._warning_due(now_s, final=final, abandoning=abandoning):
                return
            refused_full = self._refused - self._refused_closed
            refused = refused_full - self._warned[0]
            failed = self._failed - self._warned[1]
            unwritten = self._unwritten - self._warned[2]
            self._warned = (refused_full, self._failed, self._unwritten)
            self._warned_s = now_s
            self._warning = True
            error = self._last_error
        causes = []
        if refused:
            causes.append(
                f"{refused} refused, the buffer being full: its reader took lines"
                " slower than they came"
            )
        if failed:
            causes.append(f"{failed} lost to failed writes: {error}")
        if unwritten:
            causes.append(
                f"{unwritten} left unwritten at close: its reader took no more"
                f" in the {self._close_wait_s:g} s close waited"
            )
        lost = refused + failed + unwritten
        try:
            logger.warning(
                "%s: %d %s lost (%s); this warning comes at most every %g s,"
                " counting the lines lost since the one before",
                self._name,
                lost,
                "line" if lost == 1 else "lines",
                "; ".join(causes),
                WARNING_INTERVAL_S,
            )
        finally:
            with self._lock:
                self._warning = False

    def _warning_due(self, now_s: float, *, final: bool, abandoning: bool) -> bool:
        """Whether lines were lost since the last warning and another may
        come now; the lock held."""
        if self._abandoned != abandoning or self._warning:
            # Given up on, the thread is quiet; or a warning is being written
            # (by a thread stuck in it, if `close` asks).
            return False
        warned_refused, warned_failed, warned_unwritten = self._warned
        if (
            self._refused - self._refused_closed == warned_refused
            and self._failed == warned_failed
            and self._unwritten == warned_unwritten
        ):
            return False
        return final or self._warned_s is None or now_s - self._warned_s >= WARNING_INTERVAL_S

    def _write_lines(self, lines: list[bytes]) -> None:
        """Writes the lines in chunks of whole lines, counting each chunk's as
        it goes."""
        chunk: list[bytes] = []
        chunk_bytes = 0
        for index, line in enumerate(lines):
            if chunk and chunk_bytes + len(line) > _CHUNK_BYTES:
                if not self._write_chunk(chunk, chunk_bytes):
                    self._count_failed(lines[index:])  # the rest would fail as well
                    return
                if self._abandoned:
                    return  # `close` counted the rest unwritten
                chunk, chunk_bytes = [], 0
            chunk.append(line)
            chunk_bytes += len(line)
        if chunk:
            self._write_chunk(chunk, chunk_bytes)

    def _write_chunk(self, chunk: list[bytes], size: int) -> bool:
        """Writes the chunk, in one write(2) where the sink takes it whole,
        and counts its lines; returns False if the sink failed. Once `close`
        gave up on the thread, it counts nothing: `close` counted the lines."""
        data = chunk[0] if len(chunk) == 1 else b"".join(chunk)
        view = memoryview(data)
        error = None
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                # A non-blocking sink, full: wait, then go on from where the
                # write stopped, so no line is cut in two.
                if not self._wait_writable():
                    break
            except OSError as failure:
                # A closed or broken sink: what it did not take is lost.
                error = failure
                break
        written = _whole_lines(chunk, size - len(view))
        with self._lock:
            if self._abandoned:
                return True
            self._buffered_bytes -= size
            self._pending -= len(chunk)
            self._written += written
            self._failed += len(chunk) - written
            if error is not None:
                self._last_error = error
        return error is None

    def _count_failed(self, lines: list[bytes]) -> None:
        with self._lock:
            if self._abandoned:
                return
            self._buffered_bytes -= sum(len(line) for line in lines)
            self._pending -= len(lines)
            self._failed += len(lines)

    def _wait_writable(self, *, counted: bool = True) -> bool:
        """Waits until the sink takes bytes again (`counted` in the
        statistics' `sink_waits`); False if `close` gave up on the thread
        meanwhile."""
        if counted:
            with self._lock:
                self._sink_waits += 1
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        # A closed reader or fd also ends the wait (POLLERR, POLLHUP, POLLNVAL):
        # the next write then fails and counts its lines lost.
        while not poller.poll(_POLL_MS):
            if self._abandoned:
                return False
        return not self._abandoned


def _would_not_block(fd: int) -> bool:
    """Whether a short write to `fd` now would not wait for its reader
    (or would fail at once)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))


def _whole_lines(chunk: list[bytes], written_bytes: int) -> int:
    """How many of the chunk's lines lie whole in its first `written_bytes`."""
    whole = 0
    for line in chunk:
        written_bytes -= len(line)
        if written_bytes < 0:
            break
        whole += 1
    return whole
