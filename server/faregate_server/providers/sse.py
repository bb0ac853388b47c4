"""A server-sent events parser over an aiohttp body.

Follows the WHATWG event-stream rules that providers rely on: events end at a
blank line, `data:` lines of one event join with newlines, lines starting with
`:` are comments (keep-alives), one leading space after the colon is dropped,
and lines may end in LF or CRLF. Events split across TCP reads or packed
several to a read are handled by reading line by line.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    """The `event:` field; "message" when the event named none."""
    data: str


async def iter_sse(lines: AsyncIterable[bytes]) -> AsyncIterator[SseEvent]:
    """Yields each complete event of the stream, in order."""
    event = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data))
            event = ""
            data = []
            continue
        if line[0] == 0x3A:  # ":" starts a comment
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value.decode())
        elif name == b"event":
            event = value.decode()
    if data:
        # A stream that ends without the closing blank line still delivered this event.
        yield SseEvent(event or "message", "\n".join(data))
