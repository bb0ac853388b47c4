"""A hostile fake upstream that writes raw HTTP/1.1 bytes, for answers no
well-behaved server library would send: a gzip body that inflates to a
gigabyte, a body without end, a Content-Length that lies, a 10 MB SSE line.

Each request (any path) is answered by the next `Answer` queued (else the
default): its head as written, then its body pieces as generated, lazily, so
no large answer is ever held whole. The fake counts the body bytes the
socket accepted and records whether the client hung up before the end.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Answer:
    """One response: the status line and headers, then body pieces."""

    head: bytes
    body: Callable[[], Iterator[bytes]]
    """Generates the body's pieces; each is one write (and drain)."""


@dataclass
class Served:
    body_bytes_sent: int = 0
    hung_up: bool = False
    """The client closed the connection before the whole body was written."""


@dataclass
class RawUpstream:
    default: Answer | None = None
    queued: deque[Answer] = field(default_factory=deque)
    served: list[Served] = field(default_factory=list)
    base_url: str = ""
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = Served()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            answer = self.queued.popleft() if self.queued else self.default
            assert answer is not None, "no answer scripted"
            self.served.append(served)
            writer.write(answer.head)
            await writer.drain()
            for piece in answer.body():
                writer.write(piece)
                await writer.drain()
                served.body_bytes_sent += len(piece)
        except (ConnectionError, asyncio.IncompleteReadError):
            served.hung_up = True
        finally:
            writer.close()


def http_head(status: int = 200, **headers: str | int) -> bytes:
    """A status line and headers; underscores in names become dashes."""
    lines = [f"HTTP/1.1 {status} X", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def openai_answer_json(content: str) -> bytes:
    return json.dumps(
        {
            "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        }
    ).encode()


def gzip_bomb(inflated_bytes: int) -> Answer:
    """An OpenAI answer whose gzip body is about inflated_bytes / 1000 on the
    wire and inflates to `inflated_bytes` of JSON (one long content string).

    Made from one compressed MiB repeated: after a full flush deflate starts
    afresh, so each MiB of the same input compresses to the same bytes; the
    gzip trailer's CRC is computed as the body goes out.
    """
    block = b"a" * (1 << 20)
    prefix = b'{"choices": [{"finish_reason": "stop", "message": {"content": "'
    suffix = b'"}}]}'
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    opening = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    closing = (compressor.compress(suffix) + compressor.flush(zlib.Z_FINISH))[:-8]
    blocks = inflated_bytes // len(block)
    size = len(opening) + blocks * len(repeated) + len(closing) + 8

    def body() -> Iterator[bytes]:
        crc = zlib.crc32(prefix)
        yield opening
        for _ in range(blocks):
            crc = zlib.crc32(block, crc)
            yield repeated
        crc = zlib.crc32(suffix, crc)
        total = len(prefix) + blocks * len(block) + len(suffix)
        yield closing + struct.pack("<II", crc, total & 0xFFFFFFFF)

    head = http_head(Content_Type="application/json", Content_Encoding="gzip", Content_Length=size)
    return Answer(head, body)


def incompressible_gzip(data: bytes) -> Answer:
    """`data` as gzip's stored (uncompressed) blocks, as an encoder sends an
    incompressible body: a Content-Length a little over `len(data)`."""
    body = gzip.compress(data, compresslevel=0)
    head = http_head(
        Content_Type="application/json", Content_Encoding="gzip", Content_Length=len(body)
    )
    return Answer(head, lambda: iter([body]))


def endless_json(total_bytes: int) -> Answer:
    """An OpenAI answer of `total_bytes` of JSON, chunked, with no Content-Length."""
    piece = b"a" * (64 << 10)
    prefix = b'{"choices": [{"finish_reason": "stop", "message": {"content": "'
    suffix = b'"}}]}'

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    def body() -> Iterator[bytes]:
        yield chunk(prefix)
        for _ in range(total_bytes // len(piece)):
            yield chunk(piece)
        yield chunk(suffix) + b"0\r\n\r\n"

    return Answer(http_head(Content_Type="application/json", Transfer_Encoding="chunked"), body)


def announced_length(declared_bytes: int) -> Answer:
    """A small valid answer under a Content-Length claiming `declared_bytes`."""
    data = openai_answer_json("ok")
    head = http_head(Content_Type="application/json", Content_Length=declared_bytes)
    return Answer(head, lambda: iter([data]))


def sse_answer(pieces: Callable[[], Iterator[bytes]]) -> Answer:
    """An SSE answer of the pieces generated, chunked, one piece per write."""

    def body() -> Iterator[bytes]:
        for piece in pieces():
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
        yield b"0\r\n\r\n"

    return Answer(http_head(Content_Type="text/event-stream", Transfer_Encoding="chunked"), body)
