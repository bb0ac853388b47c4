"""Reading upstream bodies within bounds: a size cap, and an idle watch for streams.

aiohttp hands over bodies already decompressed, so every count here is of
decompressed bytes: a small gzip body that inflates without end is stopped at
the cap like a plain one. Reading stops at the first byte over the cap; what
was read is dropped and the connection is closed by the caller's `async with`.

`IdleWatch` defines a stream's idleness as faregate waiting for the next data
event and none arriving: comments (`: keep-alive`) and events with no data
keep a connection busy without moving the answer on, so they do not count.
It owns one timer handle per stream, moved only when it fires; the parser
pays one clock read and two attribute writes per data event.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class ByteSource(Protocol):
    """What faregate reads an upstream body from (aiohttp's `StreamReader`)."""

    async def readany(self) -> bytes:
        """Whatever has arrived (at least one byte), or b"" at the end."""
        ...

    async def read(self, n: int) -> bytes:
        """At most n bytes of what has arrived (at least one), or b"" at the end."""
        ...

    def set_exception(self, exc: BaseException) -> None:
        """Makes the pending and every later read raise `exc`."""
        ...


class ResponseTooLarge(Exception):
    """An upstream body, or one event of a stream, is over the model's `max_response_bytes`."""


class NoDataTimeout(TimeoutError):
    """A stream sent no data event for longer than its model's idle timeout."""


async def read_capped(source: ByteSource, max_bytes: int) -> bytes:
    """The whole body, or ResponseTooLarge as soon as it passes `max_bytes`."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await source.readany():
        total += len(chunk)
        if total > max_bytes:
            raise ResponseTooLarge(f"upstream answer exceeds max_response_bytes ({max_bytes})")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_prefix(source: ByteSource, max_bytes: int) -> bytes:
    """At most the first `max_bytes` of the body; the rest is left unread."""
    chunks: list[bytes] = []
    total = 0
    while total < max_bytes and (chunk := await source.readany()):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)[:max_bytes]


class IdleWatch:
    """Ends a stream's reads with NoDataTimeout after `idle_s` without a data event.

    The parser sets `reading` False while a parsed event is out with its
    consumer (a slow caller's time is not the upstream's silence) and, when
    the consumer comes back, stamps `mark_s` and sets `reading` True again.
    Close it when the stream ends.
    """

    __slots__ = ("_handle", "_idle_s", "_loop", "_source", "clock", "mark_s", "reading")

    def __init__(self, source: ByteSource, idle_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.clock = loop.time
        """The loop's clock, for stamping `mark_s`."""
        self._source = source
        self._idle_s = idle_s
        self.mark_s = loop.time()
        """Loop time since which faregate has waited for the next data event."""
        self.reading = True
        """False while the last event is with the consumer."""
        self._handle = loop.call_at(self.mark_s + idle_s, self._check)

    def _check(self) -> None:
        now_s = self._loop.time()
        if self.reading:
            due_s = self.mark_s + self._idle_s
            # asyncio may run a timer up to its clock resolution early.
            if now_s >= due_s - 0.001:
                self._source.set_exception(
                    NoDataTimeout(f"upstream sent no data event for {self._idle_s:g} s")
                )
                return
        else:
            due_s = now_s + self._idle_s
        self._handle = self._loop.call_at(due_s, self._check)

    def close(self) -> None:
        self._handle.cancel()
