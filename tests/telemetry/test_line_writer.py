"""LineWriter on a real pipe: lines arrive whole and in order, a full buffer
refuses (and counts) lines instead of blocking, a full non-blocking pipe is
waited for, lost lines are warned of at most once per interval, and closing
writes the rest."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
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


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += os.read(fd, size - len(data))
    return data


class _SteppedClock:
    """A monotonic clock the test sets, counting how often it was read."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now_s


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


async def test_lost_lines_are_warned_of_at_most_once_per_interval_counting_all(
    pipe: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    read_fd, write_fd = pipe
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    line = b"x" * 99 + b"\n"
    clock = _SteppedClock()
    writer = LineWriter(write_fd, "test", max_buffered_bytes=len(line), monotonic_s=clock)
    # The pipe opened again, non-blocking, to fill it; the writer's own
    # descriptor stays blocking.
    filler_fd = os.open(f"/proc/self/fd/{write_fd}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        # Each round: a full pipe holds the one line the buffer takes in the
        # thread's write(2), so the lines after it are refused; then the
        # test reads, the write ends, and the thread counts the batch and
        # looks at the clock to decide on a warning.
        for batch, (now_s, refused) in enumerate([(100.0, 5), (105.0, 3), (110.0, 2)]):
            clock.now_s = now_s
            filler = _fill(filler_fd)
            writer.write(line)
            for _ in range(refused):
                writer.write(line)
            assert _read_exactly(read_fd, len(filler) + len(line)) == filler + line
            await eventually(lambda: clock.reads == batch + 1)  # noqa: B023
    finally:
        os.close(filler_fd)
    writer.close()

    # The first at once; the second held back until 10 s after it, then
    # counting both rounds since.
    warnings = _warnings(caplog)
    assert [warning.split()[1] for warning in warnings] == ["5", "5"]
    assert "5 refused, the buffer being full: its reader took lines slower" in warnings[1]
    assert "at most every 10 s" in warnings[1]
    statistics = writer.statistics()
    assert (statistics.written_lines, statistics.refused_lines) == (3, 10)


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
