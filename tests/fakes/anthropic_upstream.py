"""A fake Anthropic Messages upstream for tools, images, thinking and
structured output: a real aiohttp server on 127.0.0.1 answering
POST /v1/messages with scripted content blocks, whole or as the documented
SSE events.

Each request is checked first against the rules the real API enforces on
what faregate builds (/work notes on the wire: tool results first in their
user message, each tool_use answered in the next message, no empty text
blocks, roles alternating, thinking's conflicts with forced tools and
temperature, its budget's range, a final assistant tool turn starting with
its thinking), answering the API's 400 error body when one is broken, so an
adapter bug fails loudly. Every body is recorded in `received`.

A script is a whole answer (`content` blocks, a stop reason, stop details,
usage), streamed by `events` as Anthropic streams it: message_start,
content_block_start/delta/stop per block (text in text_delta, tool input in
input_json_delta fragments after a leading "", thinking in thinking_delta
then one signature_delta, redacted_thinking whole in its start), a ping,
message_delta, message_stop. `cut_last_block` leaves the last block open
(no content_block_stop, its JSON cut) as a max_tokens stop does;
`drop_after_events` cuts the connection partway.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class AnthropicScript:
    content: list[dict[str, Any]] = field(
        default_factory=lambda: [{"type": "text", "text": "Hello"}]
    )
    stop_reason: str = "end_turn"
    stop_details: dict[str, Any] | None = None
    usage: tuple[int, int] = (11, 3)
    usage_block: dict[str, Any] | None = None
    """A whole usage block (cache counts and all) to send instead of
    `usage`'s: whole as it is; streamed, message_start carries it with an
    output of 1, and message_delta carries it whole (cumulative counts)."""
    delta_usage: dict[str, Any] | None = None
    """Streamed: message_delta's usage, when it is not the whole block."""
    cut_last_block: bool = False
    """Streamed: the last block stops mid-JSON with no content_block_stop."""
    fragment_chars: int = 7
    """Streamed: how many characters each input_json_delta carries."""
    drop_after_events: int | None = None
    """Streamed: close the connection abruptly after this many events (once
    `drop_when` is set, if given: a client's reader drops what it has buffered
    when the connection fails, so a test waits until it has read them)."""
    drop_when: asyncio.Event | None = None


def events(script: AnthropicScript) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events (name, data) of a scripted answer, in order."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": "m",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": _usage(script) | {"output_tokens": 1},
        },
    }  # fmt: skip
    out: list[tuple[str, dict[str, Any]]] = [("message_start", start)]
    last = len(script.content) - 1
    for index, block in enumerate(script.content):
        kind = block["type"]
        cut = script.cut_last_block and index == last
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": block["text"]}]
        elif kind == "tool_use":
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"]) if block["input"] else ""
            if cut:
                raw = raw[: len(raw) // 2]
            size = script.fragment_chars
            deltas = [{"type": "input_json_delta", "partial_json": ""}] + [
                {"type": "input_json_delta", "partial_json": raw[i : i + size]}
                for i in range(0, len(raw), size)
            ]
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            text = block["thinking"]
            half = len(text) // 2
            deltas = [
                {"type": "thinking_delta", "thinking": text[:half]},
                {"type": "thinking_delta", "thinking": ""},
                {"type": "thinking_delta", "thinking": text[half:]},
                {"type": "signature_delta", "signature": block["signature"]},
            ]
        else:
            opening = block
        out.append(
            ("content_block_start", {"type": "content_block_start", "index": index,
                                     "content_block": opening})
        )  # fmt: skip
        if index == 0:
            out.append(("ping", {"type": "ping"}))
        out.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        if not cut:
            out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(("unknown_future_event", {"type": "unknown_future_event"}))
    delta: dict[str, Any] = {"stop_reason": script.stop_reason, "stop_sequence": None}
    if script.stop_details is not None:
        delta["stop_details"] = script.stop_details
    out.append(
        ("message_delta", {"type": "message_delta", "delta": delta,
                           "usage": _delta_usage(script)})
    )  # fmt: skip
    out.append(("message_stop", {"type": "message_stop"}))
    return out


def _usage(script: AnthropicScript) -> dict[str, Any]:
    if script.usage_block is not None:
        return dict(script.usage_block)
    return {"input_tokens": script.usage[0], "output_tokens": script.usage[1]}


def _delta_usage(script: AnthropicScript) -> dict[str, Any]:
    if script.delta_usage is not None:
        return script.delta_usage
    if script.usage_block is not None:
        return dict(script.usage_block)
    return {"output_tokens": script.usage[1]}


def wire_problem(body: dict[str, Any]) -> str | None:
    """The API's error message for the first rule `body` breaks, or None."""
    messages = body.get("messages") or []
    thinking = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
    for number, message in enumerate(messages):
        if number and messages[number - 1]["role"] == message["role"]:
            return f"messages.{number}: roles must alternate between user and assistant"
        content = message["content"]
        blocks = content if isinstance(content, list) else []
        for place, block in enumerate(blocks):
            if block["type"] == "text" and not block["text"].strip():
                return f"messages.{number}.content.{place}: text content blocks must be non-empty"
        kinds = [block["type"] for block in blocks]
        others = [i for i, kind in enumerate(kinds) if kind != "tool_result"]
        results = [i for i, kind in enumerate(kinds) if kind == "tool_result"]
        if others and results and others[0] < results[-1]:
            return f"messages.{number}: tool_result blocks must come first"
        uses = [block["id"] for block in blocks if block["type"] == "tool_use"]
        if uses:
            answer = messages[number + 1]["content"] if number + 1 < len(messages) else []
            answered = {
                block["tool_use_id"]
                for block in (answer if isinstance(answer, list) else [])
                if block["type"] == "tool_result"
            }
            missing = [use for use in uses if use not in answered]
            if missing:
                return (
                    f"messages.{number}: `tool_use` ids were found without `tool_result` "
                    f"blocks immediately after: {', '.join(missing)}"
                )
        for block in blocks:
            if block["type"] == "thinking" and not block.get("signature"):
                return f"messages.{number}: thinking blocks need their signature"
    if thinking:
        if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            return "Thinking may not be enabled when tool_choice forces tool use."
        if body.get("temperature", 1) != 1:
            return (
                "`temperature` may only be set to 1 when thinking is enabled or in adaptive mode."
            )
        budget = body["thinking"].get("budget_tokens")
        if budget is not None and not 1024 <= budget < body["max_tokens"]:
            return "`max_tokens` must be greater than `thinking.budget_tokens`"
        tool_turns = [m for m in messages if m["role"] == "assistant" and isinstance(
            m["content"], list) and any(b["type"] == "tool_use" for b in m["content"])]  # fmt: skip
        if tool_turns and tool_turns[-1]["content"][0]["type"] not in (
            "thinking", "redacted_thinking",
        ):  # fmt: skip
            return (
                "When `thinking` is enabled, a final `assistant` message must start with a "
                "thinking block"
            )
    return None


class FakeAnthropic:
    """The server; `queue` scripts, read `received`."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._scripts: deque[AnthropicScript] = deque()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def queue(self, *scripts: AnthropicScript) -> None:
        self._scripts.extend(scripts)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        problem = wire_problem(body)
        if problem is not None:
            error = {"type": "error", "error": {"type": "invalid_request_error",
                                                "message": problem}}  # fmt: skip
            return web.json_response(error, status=400)
        script = self._scripts.popleft() if self._scripts else AnthropicScript()
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": "m",
                    "content": script.content,
                    "stop_reason": script.stop_reason,
                    "stop_sequence": None,
                    "stop_details": script.stop_details,
                    "usage": _usage(script),
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for sent, (name, data) in enumerate(events(script)):
            if sent == script.drop_after_events:
                if script.drop_when is not None:
                    await script.drop_when.wait()
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response
