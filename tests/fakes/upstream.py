"""A scriptable fake upstream: a real aiohttp server speaking OpenAI's chat
completions and Anthropic's Messages wire formats, on 127.0.0.1.

Tests queue a `Script` per request (or set a default) to shape the answer:
status and headers, text chunks and their pacing, usage or none, an error
event or a dropped connection mid-stream, a hang before answering, or raw
bytes written in pieces for SSE edge cases. The fake records every request
body and the monotonic time at which each client went away before the answer
was complete, which is how tests prove upstream cancellation.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

OMIT: Any = object()
"""A usage count the fake leaves out of its usage block."""


def _counts(**counts: Any) -> dict[str, Any]:
    """A usage block without the counts scripted as `OMIT`."""
    return {name: value for name, value in counts.items() if value is not OMIT}


@dataclass
class Script:
    """How the fake answers one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error_body: str = '{"error": {"message": "scripted failure", "type": "server_error"}}'
    chunks: list[str] = field(default_factory=lambda: ["Hello", ",", " world"])
    usage: tuple[Any, Any] | None = (11, 3)
    """(input, output) tokens to report, as any JSON values (a liar's: -5,
    3.5, "12", true, 1e17) or `OMIT` to leave one out; None reports no usage."""
    usage_block: dict[str, Any] | None = None
    """A whole usage block in the provider's own shape (OpenAI's details,
    Anthropic's cache counts), sent as it is instead of `usage`'s; streamed
    by Anthropic, message_start carries it but its output (1 instead) and
    message_delta carries it whole, as cumulative counts are sent."""
    usage_in_every_chunk: bool = False
    """OpenAI, streamed with a `usage_block`: every text chunk carries a
    running snapshot of it, as Gemini's compatible endpoint sends (its
    completion and total grow chunk by chunk), before the whole block."""
    finish_reason: str = "stop"
    stop_reason: str | None = None
    """Anthropic's stop reason to send as it is, instead of finish_reason's."""
    refusal: str | None = None
    """OpenAI: the answer's `refusal`, with null `content` (whole), or one more
    delta holding it after the chunks (streamed); null when None, as OpenAI
    sends it on every answer."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """OpenAI: the calls the answer makes, each `{"id", "name", "arguments"}`
    (arguments as JSON text): whole, `message.tool_calls`; streamed, as
    `openai_tool_call_deltas` splits them, after the chunks, unless
    `stream_deltas` is given."""
    stream_deltas: list[dict[str, Any]] | None = None
    """OpenAI: raw `delta` objects streamed after the chunks, one per event,
    in place of those `tool_calls` would make (interleavings, the variants of
    compatible servers)."""
    reasoning_content: str | None = None
    """OpenAI-compatible: `message.reasoning_content` of a whole answer."""
    gate: asyncio.Event | None = None
    """When set, the answer waits until the test sets this event."""
    hang_s: float = 0.0
    """Delay before the response headers (and, when not streaming, the body)."""
    chunk_delay_s: float = 0.0
    """Delay before each streamed chunk after the first."""
    pause_after: int | None = None
    """Wait for `resume` after this many chunks, then go on."""
    resume: asyncio.Event | None = None
    stall_after: int | None = None
    """Stop sending (but keep the connection) after this many chunks."""
    drop_after: int | None = None
    """Close the connection abruptly after this many chunks."""
    error_event_after: int | None = None
    """Send the provider's in-stream error event after this many chunks."""
    error_event_message: str = "scripted mid-stream failure"
    echo_headers: bool = False
    """A non-200 answer's body also carries the request's headers, as a careless
    upstream's might: `{"error": {"message": error_body, "request_headers": {...}}}`."""
    raw_sse: list[bytes] | None = None
    """Exact body pieces to write, each as its own TCP write, instead of chunks."""
    keepalive_after: int | None = None
    """After this many chunks, send only keep-alives every `keepalive_every_s`
    and never finish: `keepalive_bytes`, else for OpenAI a `: keep-alive`
    comment and a blank line, for Anthropic a `ping` event."""
    keepalive_every_s: float = 0.05
    keepalive_bytes: bytes | None = None
    usage_only_in_stream_end: bool = True


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


class FakeUpstream:
    """Start with `await fake.start()`; `fake.base_url` is then set."""

    def __init__(self, send_buffer_bytes: int | None = None) -> None:
        """`send_buffer_bytes` sets SO_SNDBUF on the fake's sockets, so that
        the kernel holds little of what a client does not read yet."""
        self._send_buffer_bytes = send_buffer_bytes
        self.streamed_bytes = 0
        """SSE bytes of text chunks the fake managed to write, over all streams."""
        self.default = Script()
        self.by_model: dict[str, Script] = {}
        """Scripts for requests naming a model; they take precedence over `default`."""
        self.choose: Callable[[dict[str, Any]], Script] | None = None
        """Picks the script from the request body; takes precedence over the rest."""
        self._queued: deque[Script] = deque()
        self.received: list[Received] = []
        self.disconnected_at: list[float] = []
        self.disconnected_models: list[str] = []
        self.completed = 0
        self.reported_usage: list[tuple[Any, Any]] = []
        self.reported_blocks: list[dict[str, Any]] = []
        """The `usage_block`s of the answers sent, in order."""
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.base_url = ""

    def queue(self, *scripts: Script) -> None:
        self._queued.extend(scripts)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        # handler_cancellation: a client that goes away cancels the handler,
        # which is when the fake records the disconnect.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self._send_buffer_bytes is not None:
            # Accepted sockets inherit it from the listening one.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer_bytes)
        listener.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, listener)
        await site.start()
        port = listener.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> None:
        await self._wait_until(lambda: len(self.received) >= count, timeout_s)

    async def wait_for_disconnects(self, count: int, timeout_s: float = 5.0) -> None:
        await self._wait_until(lambda: len(self.disconnected_at) >= count, timeout_s)

    async def _wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _next_script(self, model: str) -> Script:
        if self._queued:
            return self._queued.popleft()
        return self.by_model.get(model, self.default)

    def calls_to(self, model: str) -> int:
        return sum(1 for received in self.received if received.body.get("model") == model)

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _OpenAIFormat())

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _AnthropicFormat())

    async def _serve(self, request: web.Request, wire: _Format) -> web.StreamResponse:
        body = await request.json()
        self.received.append(Received(request.path, body, dict(request.headers)))
        self._changed.set()
        script = self.choose(body) if self.choose else self._next_script(body.get("model", ""))
        try:
            if script.gate is not None:
                await script.gate.wait()
            if script.hang_s:
                await asyncio.sleep(script.hang_s)
            if script.status != 200:
                text = script.error_body
                if script.echo_headers:
                    echo = {"message": text, "request_headers": dict(request.headers)}
                    text = json.dumps({"error": echo})
                return web.Response(
                    status=script.status,
                    text=text,
                    headers=script.headers,
                    content_type="application/json",
                )
            if not body.get("stream"):
                self._record_usage(script)
                self.completed += 1
                return web.json_response(wire.whole(body, script))
            return await self._stream(request, body, script, wire)
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected_at.append(time.monotonic())
            self.disconnected_models.append(body.get("model", ""))
            self._changed.set()
            raise

    async def _stream(
        self, request: web.Request, body: dict[str, Any], script: Script, wire: _Format
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if script.raw_sse is not None:
            for piece in script.raw_sse:
                await response.write(piece)
                await asyncio.sleep(0.002)  # separate TCP reads
            self.completed += 1
            return response
        await response.write(wire.opening(body, script))
        for index, chunk in enumerate(script.chunks):
            if index == script.keepalive_after:
                while True:
                    await response.write(script.keepalive_bytes or wire.keepalive())
                    await asyncio.sleep(script.keepalive_every_s)
            if index == script.pause_after and script.resume is not None:
                await script.resume.wait()
            if index == script.stall_after:
                await asyncio.sleep(3600)
            if index == script.drop_after:
                assert request.transport is not None
                await asyncio.sleep(0.05)  # let what was written reach the client first
                request.transport.abort()
                return response
            if index == script.error_event_after:
                await response.write(wire.error_event(script.error_event_message))
                return response
            if index and script.chunk_delay_s:
                await asyncio.sleep(script.chunk_delay_s)
            delta = wire.delta(chunk)
            if script.usage_in_every_chunk and script.usage_block is not None:
                snapshot = _running_usage(script.usage_block, index + 1, len(script.chunks))
                delta = _sse({**json.loads(delta[len(b"data: ") :]), "usage": snapshot})
            await response.write(delta)
            self.streamed_bytes += len(delta)
        self._record_usage(script)
        await response.write(wire.closing(script))
        self.completed += 1
        return response

    def _record_usage(self, script: Script) -> None:
        if script.usage_block is not None:
            self.reported_blocks.append(script.usage_block)
        elif script.usage is not None:
            self.reported_usage.append(script.usage)


def _sse(data: Any, event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {json.dumps(data)}\n\n".encode()


class _Format:
    def whole(self, body: dict[str, Any], script: Script) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self, body: dict[str, Any], script: Script) -> bytes:
        raise NotImplementedError

    def delta(self, text: str) -> bytes:
        raise NotImplementedError

    def closing(self, script: Script) -> bytes:
        raise NotImplementedError

    def error_event(self, message: str) -> bytes:
        raise NotImplementedError

    def keepalive(self) -> bytes:
        raise NotImplementedError


class _OpenAIFormat(_Format):
    def whole(self, body: dict[str, Any], script: Script) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None if script.refusal else "".join(script.chunks) or None,
                        "refusal": script.refusal,
                    },
                    "finish_reason": script.finish_reason,
                }
            ],
        }
        message = answer["choices"][0]["message"]
        if script.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in script.tool_calls
            ]
        if script.reasoning_content is not None:
            message["reasoning_content"] = script.reasoning_content
        if script.usage_block is not None:
            answer["usage"] = script.usage_block
        elif script.usage is not None:
            answer["usage"] = _openai_usage(script.usage)
        return answer

    def opening(self, body: dict[str, Any], script: Script) -> bytes:
        self._model = body["model"]
        return _sse(self._chunk({"role": "assistant", "content": "", "refusal": None}, None))

    def delta(self, text: str) -> bytes:
        return _sse(self._chunk({"content": text}, None))

    def closing(self, script: Script) -> bytes:
        out = b""
        deltas = script.stream_deltas
        if deltas is None:
            deltas = openai_tool_call_deltas(script.tool_calls)
        for delta in deltas:
            out += _sse(self._chunk(delta, None))
        if script.refusal is not None:
            out += _sse(self._chunk({"refusal": script.refusal}, None))
        out += _sse(self._chunk({}, script.finish_reason))
        if script.usage_block is not None:
            out += _sse({"id": "chatcmpl-fake", "choices": [], "usage": script.usage_block})
        elif script.usage is not None:
            usage = _openai_usage(script.usage)
            out += _sse({"id": "chatcmpl-fake", "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n"

    def error_event(self, message: str) -> bytes:
        return _sse({"error": {"message": message, "type": "server_error"}})

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }


def openai_tool_call_deltas(
    calls: list[dict[str, Any]], piece_chars: int = 4, *, interleave: bool = False
) -> list[dict[str, Any]]:
    """The `delta` objects OpenAI streams `calls` as: per call, a first
    fragment with index, id, type, name and empty arguments, then the
    arguments in pieces of `piece_chars` (split anywhere, escapes included);
    call after call as OpenAI sends them, or, `interleave`d, a piece of each
    in turn."""
    per_call: list[list[dict[str, Any]]] = []
    for index, call in enumerate(calls):
        first = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        text = call["arguments"]
        pieces = [
            {"index": index, "function": {"arguments": text[start : start + piece_chars]}}
            for start in range(0, len(text), piece_chars)
        ]
        per_call.append([first, *pieces])
    if interleave:
        order = [
            fragment
            for turn in range(max((len(f) for f in per_call), default=0))
            for fragments in per_call
            if turn < len(fragments)
            for fragment in (fragments[turn],)
        ]
    else:
        order = [fragment for fragments in per_call for fragment in fragments]
    return [{"tool_calls": [fragment]} for fragment in order]


def _running_usage(block: dict[str, Any], done: int, chunks: int) -> dict[str, Any]:
    """An OpenAI usage block as far as `done` of `chunks` chunks: its prompt
    whole, its completion and total grown in proportion."""
    prompt = block["prompt_tokens"]
    return {
        **block,
        "completion_tokens": block["completion_tokens"] * done // chunks,
        "total_tokens": prompt + (block["total_tokens"] - prompt) * done // chunks,
    }


def _openai_usage(usage: tuple[Any, Any]) -> dict[str, Any]:
    prompt, completion = usage
    block = _counts(prompt_tokens=prompt, completion_tokens=completion)
    if all(isinstance(count, int) for count in block.values()):
        block["total_tokens"] = sum(block.values())
    return block


_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens"}


def _anthropic_stop(script: Script) -> str:
    return script.stop_reason or _ANTHROPIC_STOP.get(script.finish_reason, "end_turn")


class _AnthropicFormat(_Format):
    def whole(self, body: dict[str, Any], script: Script) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "".join(script.chunks)}],
            "stop_reason": _anthropic_stop(script),
        }
        if script.usage_block is not None:
            answer["usage"] = script.usage_block
        elif script.usage is not None:
            answer["usage"] = _counts(input_tokens=script.usage[0], output_tokens=script.usage[1])
        return answer

    def opening(self, body: dict[str, Any], script: Script) -> bytes:
        message: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
        }
        if script.usage_block is not None:
            message["usage"] = {**script.usage_block, "output_tokens": 1}
        elif script.usage is not None:
            message["usage"] = _counts(input_tokens=script.usage[0], output_tokens=1)
        return _sse({"type": "message_start", "message": message}, "message_start") + _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            "content_block_start",
        )

    def delta(self, text: str) -> bytes:
        return _sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
            "content_block_delta",
        )

    def closing(self, script: Script) -> bytes:
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": _anthropic_stop(script)},
        }
        if script.usage_block is not None:
            delta["usage"] = script.usage_block
        elif script.usage is not None:
            delta["usage"] = _counts(output_tokens=script.usage[1])
        return (
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            + _sse(delta, "message_delta")
            + _sse({"type": "message_stop"}, "message_stop")
        )

    def error_event(self, message: str) -> bytes:
        return _sse(
            {"type": "error", "error": {"type": "overloaded_error", "message": message}},
            "error",
        )

    def keepalive(self) -> bytes:
        return _sse({"type": "ping"}, "ping")
