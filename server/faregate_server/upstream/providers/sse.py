"""A server-sent events parser over an aiohttp body.

Follows the WHATWG event-stream rules that providers rely on: one leading
UTF-8 byte order mark is dropped, events end at a blank line, `data:` lines
of one event join with newlines, lines starting with `:` are comments
(keep-alives), one leading space after the colon is dropped, and lines may
end in LF, CRLF or a lone CR (a CRLF split across reads is one line end).
Events split across TCP reads or packed several to a read are handled by
splitting what arrived at line ends. Deliberate deviations: an event the
stream ends without its closing blank line is still dispatched (an answer
cut there delivered it), invalid UTF-8 is a malformed answer rather than
replacement characters, and `id:` and `retry:` are ignored (faregate never
reconnects).

Bounds: one event (its lines, and a line still arriving) may hold at most
`max_event_bytes`; past that the stream is refused with ResponseTooLarge
before more is buffered. Only events with data reach the caller and reset
the idle watch: comments, events whose data is empty and the named
keep-alive events (Anthropic's `ping`) are dropped.

Cost per read: a scan for CR (a read with none, the usual LF stream, is
split as it is), then one split at line ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from dataclasses import dataclass

from faregate_server.upstream.providers.reading import ByteSource, IdleWatch, ResponseTooLarge

_BOM = b"\xef\xbb\xbf"
_READ_BYTES = 4 * 1024
"""How much is taken from aiohttp's buffer at a time. A slow caller suspends
the parser between events, holding the lines of one read: small reads keep
that small (the buffer itself is bounded by the session's read_bufsize)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    """The `event:` field; "message" when the event named none."""
    data: str


async def iter_sse(
    source: ByteSource,
    watch: IdleWatch,
    max_event_bytes: int,
    keepalive_events: Collection[str] = (),
) -> AsyncGenerator[SseEvent, None]:
    """Yields each complete event of the stream with data, in order."""
    clock = watch.clock
    event = ""
    data: list[str] = []
    event_bytes = 0  # of the current event's complete lines
    partial: list[bytes] = []  # a line not ended yet, in the pieces it arrived in
    partial_bytes = 0
    after_cr = False  # the last read ended in CR: an LF opening this one ends no line
    chunk = await _without_bom(source)
    while chunk:
        if after_cr:
            after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        # Integer membership is a memchr; `b"\r" in chunk` costs ten times as much.
        if 0x0D in chunk:  # CR
            after_cr = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n")
            if 0x0D in chunk:
                chunk = chunk.replace(b"\r", b"\n")
        if 0x0A not in chunk:  # LF
            partial.append(chunk)
            partial_bytes += len(chunk)
            if event_bytes + partial_bytes > max_event_bytes:
                raise _too_large(max_event_bytes)
            chunk = await source.read(_READ_BYTES)
            continue
        if partial:
            partial.append(chunk)
            chunk = b"".join(partial)
            partial = []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        for line in lines:
            event_bytes += len(line) + 1
            if line:
                if event_bytes > max_event_bytes:
                    raise _too_large(max_event_bytes)
                if line[0] != 0x3A:  # ":" starts a comment
                    event = _field(line, event, data)
                continue
            if data:
                # Inline, as at the end below: a helper costs a call per event.
                joined = "\n".join(data)
                if joined and event not in keepalive_events:
                    watch.reading = False
                    yield SseEvent(event or "message", joined)
                    watch.mark_s = clock()
                    watch.reading = True
            event = ""
            data = []
            event_bytes = 0
        partial_bytes = len(tail)
        if tail:
            partial.append(tail)
            if event_bytes + partial_bytes > max_event_bytes:
                raise _too_large(max_event_bytes)
        chunk = await source.read(_READ_BYTES)
    if partial:
        # The last line, not ended by a line end.
        line = b"".join(partial)
        if line and line[0] != 0x3A:
            event = _field(line, event, data)
    if data:
        # A stream that ends without the closing blank line still delivered this event.
        joined = "\n".join(data)
        if joined and event not in keepalive_events:
            yield SseEvent(event or "message", joined)


async def _without_bom(source: ByteSource) -> bytes:
    """The stream's first read, without one leading UTF-8 byte order mark
    (read on while what arrived could still be the start of one)."""
    start = b""
    while len(start) < len(_BOM) and _BOM.startswith(start):
        chunk = await source.read(_READ_BYTES)
        if not chunk:
            break
        start += chunk
    return start.removeprefix(_BOM)


def _field(line: bytes, event: str, data: list[str]) -> str:
    """Applies one field line to the event being built; returns its `event:` name."""
    name, _, value = line.partition(b":")
    if value[:1] == b" ":
        value = value[1:]
    if name == b"data":
        data.append(value.decode())
    elif name == b"event":
        return value.decode()
    return event


def _too_large(max_event_bytes: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"upstream sent an SSE event over max_response_bytes ({max_event_bytes})"
    )
