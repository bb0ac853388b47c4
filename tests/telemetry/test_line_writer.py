"""LineWriter on a real pipe: lines arrive whole and in order, a full buffer
refuses (and counts) lines instead of blocking, a full non-blocking pipe is
waited for, lost lines are warned of at most once per interval, and closing
writes the rest."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Iterator

import pytest
from faregate_server.telemetry.line_writer import LineWriter

from tests.support.eventually import eventually


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):  # closed by the test
            os.close(fd)


def _read_all_written(read_fd: int, write_fd: int) -> bytes:
    """Closes the write end and reads what the pipe holds."""
    os.close(write_fd)
    return _read_all(read_fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_lines_arrive_whole_and_in_order(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    writer = LineWriter(write_fd, "test")
    lines = [f"line {i} {'x' * (i % 700)}\n".encode() for i in range(2000)]
    for line in lines:
        writer.write(line)
    # The pipe holds less than all of it: closing waits for a reader.
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read_fd)))
    reader.start()
    writer.close()
    os.close(write_fd)
    reader.join()

    assert received[0] == b"".join(lines)
    statistics = writer.statistics()
    assert (statistics.written_lines, statistics.dropped_lines) == (2000, 0)
    assert statistics.buffered_bytes == 0


def test_a_reader_too_slow_loses_lines_counted_never_blocks_the_writer(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    read_fd, write_fd = pipe
    pipe_bytes = fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    buffer_bytes = 2048
    writer = LineWriter(write_fd, "test", max_buffered_bytes=buffer_bytes)
    line = b"y" * 99 + b"\n"
    # Nobody reads: the pipe holds `pipe_bytes` and the writer `buffer_bytes`,
    # so of this many lines some must be dropped, and `write` returns anyway.
    total = (pipe_bytes + buffer_bytes) // len(line) + 10
    for _ in range(total):
        writer.write(line)
    assert writer.statistics().dropped_lines >= 10

    caplog.set_level(logging.WARNING)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read_fd)))
    reader.start()
    writer.close()
    os.close(write_fd)
    reader.join()

    statistics = writer.statistics()
    assert received[0] == line * statistics.written_lines
    assert statistics.written_lines + statistics.refused_lines == total
    assert (statistics.failed_lines, statistics.buffered_bytes) == (0, 0)
    # However the warnings were spaced, the one at close counts the rest.
    warnings = _warnings(caplog)
    assert all("refused, the buffer being full" in warning for warning in warnings)
    assert sum(int(warning.split()[1]) for warning in warnings) == statistics.refused_lines


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and record.getMessage().startswith("test: ")
    ]


def _fill_full(write_fd: int) -> bytes:
    """Fills the pipe of `write_fd` (left blocking) through a second,
    non-blocking description of it; returns what it wrote."""
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    filler_fd = os.open(f"/proc/self/fd/{write_fd}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        return _fill(filler_fd)
    finally:
        os.close(filler_fd)


def _read_available(fd: int) -> bytes:
    """What the pipe holds now, without waiting for more."""
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        return os.read(fd, 1 << 16)
    return b""


class _GatedClock:
    """The writer's monotonic clock, which its thread reads after each batch
    it writes, to decide on a warning. Each read waits for the test to
    `answer` it, so the test knows where the thread is and what it counted:
    the lines lost while it waits are in the decision."""

    def __init__(self) -> None:
        self._reads = threading.Semaphore(0)
        self._answers: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._open_s: float | None = None

    def __call__(self) -> float:
        if self._open_s is not None:
            return self._open_s
        self._reads.release()
        return self._answers.get()

    def wait_for_read(self) -> None:
        assert self._reads.acquire(timeout=10), "the writer's thread never read its clock"

    def answer(self, now_s: float) -> None:
        self._answers.put(now_s)

    def open(self, now_s: float) -> None:
        """Later reads return `now_s` at once (a read waiting now still waits)."""
        self._open_s = now_s


def _fill(fd: int) -> bytes:
    """Writes to the non-blocking `fd` until its pipe is full; returns what it wrote."""
    filler = b""
    with contextlib.suppress(BlockingIOError):
        while True:
            filler += b"f" * os.write(fd, b"f" * 4096)
    return filler


async def test_a_full_non_blocking_pipe_is_waited_for_and_no_line_is_cut_or_lost(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    capacity = fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_fd, False)  # as a stderr inherited non-blocking is
    filler = _fill(write_fd)
    writer = LineWriter(write_fd, "test")
    # A line longer than the pipe holds is taken in pieces, between which the
    # pipe is full again; the short lines go in chunks the pipe refuses whole.
    lines = [
        b"first\n",
        b"L" * (3 * capacity) + b"\n",
        *(f"line {i}\n".encode() for i in range(2000)),
    ]
    for line in lines:
        writer.write(line)
    await eventually(lambda: writer.statistics().sink_waits >= 1)

    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read_fd)))
    reader.start()
    writer.close()
    os.close(write_fd)
    reader.join()

    assert received[0] == filler + b"".join(lines)
    statistics = writer.statistics()
    assert (statistics.written_lines, statistics.dropped_lines) == (len(lines), 0)
    assert statistics.buffered_bytes == 0


def test_lost_lines_are_warned_of_at_most_once_per_interval_counting_all(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    read_fd, write_fd = pipe
    line = b"x" * 99 + b"\n"
    clock = _GatedClock()
    writer = LineWriter(write_fd, "test", max_buffered_bytes=len(line), monotonic_s=clock)
    writer.write(line)
    # Each round: while the thread waits for the clock after a batch, the
    # buffer takes one line (the next batch) and refuses the rest; then the
    # clock says when the thread decides.
    for now_s, refused in [(100.0, 5), (105.0, 3), (110.0, 2)]:
        clock.wait_for_read()
        for _ in range(1 + refused):
            writer.write(line)
        clock.answer(now_s)
    clock.wait_for_read()
    clock.open(111.0)
    clock.answer(111.0)
    writer.close()

    # The first at once; the second held back until 10 s after it, then
    # counting both rounds since.
    warnings = _warnings(caplog)
    assert [warning.split()[1] for warning in warnings] == ["5", "5"]
    assert "5 refused, the buffer being full: its reader took lines slower" in warnings[1]
    assert "at most every 10 s" in warnings[1]
    statistics = writer.statistics()
    assert (statistics.written_lines, statistics.refused_lines) == (4, 10)
    assert _read_all_written(read_fd, write_fd) == line * 4


def test_close_gives_up_on_a_stalled_reader_and_counts_what_is_left(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    read_fd, write_fd = pipe
    filler = _fill_full(write_fd)
    writer = LineWriter(write_fd, "test")
    for index in range(100):
        writer.write(f"{index:099}\n".encode())
    # Nobody reads: the thread is stuck in a write(2) until the fixture
    # closes the pipe, and close returns anyway.
    writer.close(wait_s=0.05)

    statistics = writer.statistics()
    assert (statistics.written_lines, statistics.unwritten_lines) == (0, 100)
    assert (statistics.dropped_lines, statistics.buffered_bytes) == (100, 0)
    assert writer.statistics() == statistics  # the thread counts nothing more
    # The warning would wait for the reader as the lines do: there is none.
    assert _warnings(caplog) == []
    assert _read_available(read_fd) == filler


def test_close_warns_of_the_lines_it_left_when_the_sink_would_take_the_warning(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    read_fd, write_fd = pipe
    clock = _GatedClock()
    writer = LineWriter(write_fd, "test", monotonic_s=clock)
    writer.write(b"first\n")
    clock.wait_for_read()  # the thread, held after its first batch
    writer.write(b"second\n")
    writer.write(b"third\n")
    clock.open(0.0)  # for close's read; the thread's still waits
    writer.close(wait_s=0.05)

    statistics = writer.statistics()
    assert (statistics.written_lines, statistics.unwritten_lines) == (1, 2)
    (warning,) = _warnings(caplog)
    assert warning.startswith(
        "test: 2 lines lost (2 left unwritten at close: its reader took no more"
        " in the 0.05 s close waited)"
    )
    clock.answer(0.0)  # the thread goes on, finds itself given up on, and ends
    writer.close()
    assert writer.statistics() == statistics
    assert len(_warnings(caplog)) == 1
    assert _read_all_written(read_fd, write_fd) == b"first\n"


def test_a_broken_sink_counts_its_lines_as_failed_and_says_why(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    read_fd, write_fd = pipe
    os.close(read_fd)  # every write now fails with EPIPE (Python ignores SIGPIPE)
    writer = LineWriter(write_fd, "test")
    writer.write(b"lost\n")
    writer.close()
    statistics = writer.statistics()
    assert (statistics.written_lines, statistics.failed_lines, statistics.dropped_lines) == (
        0,
        1,
        1,
    )
    (warning,) = _warnings(caplog)
    assert warning.startswith("test: 1 line lost (1 lost to failed writes: [Errno 32]")
    assert "refused" not in warning


def test_lines_after_close_are_dropped(pipe: tuple[int, int]) -> None:
    _, write_fd = pipe
    writer = LineWriter(write_fd, "test")
    writer.close()
    writer.write(b"late\n")
    assert writer.statistics().refused_lines == 1
