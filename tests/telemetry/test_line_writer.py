"""LineWriter on a real pipe: lines arrive whole and in order, a full buffer
drops (and counts) lines instead of blocking, a full non-blocking pipe is
waited for, and closing writes the rest."""

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
    assert statistics.written_lines + statistics.dropped_lines == total
    assert statistics.buffered_bytes == 0
    # Each drop is followed by a write that succeeds, which reports it.
    reported = [
        int(record.getMessage().split()[0])
        for record in caplog.records
        if "test lines dropped" in record.getMessage()
    ]
    assert sum(reported) == statistics.dropped_lines


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


def test_a_broken_sink_counts_its_lines_as_dropped(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.close(read_fd)  # every write now fails with EPIPE (Python ignores SIGPIPE)
    writer = LineWriter(write_fd, "test")
    writer.write(b"lost\n")
    writer.close()
    assert writer.statistics().dropped_lines == 1
    assert writer.statistics().written_lines == 0


def test_lines_after_close_are_dropped(pipe: tuple[int, int]) -> None:
    _, write_fd = pipe
    writer = LineWriter(write_fd, "test")
    writer.close()
    writer.write(b"late\n")
    assert writer.statistics().dropped_lines == 1
