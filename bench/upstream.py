"""The bench's fake OpenAI-compatible upstream, as cheap as aiohttp allows.

POST /v1/chat/completions answers a fixed small completion with `usage`. With
`"stream": true` it answers SSE instead: one `chat.completion.chunk` event per
token for the request's `max_completion_tokens` (or `max_tokens`) tokens, one
chunk with the finish reason, one with empty `choices` and the usage, then
`data: [DONE]`.

A request that defines `tools` is answered with one call of TOOL_CALL_NAME,
as OpenAI's chat completions send it: whole, `choices[0].message.tool_calls`
(`[{id, type: "function", function: {name, arguments}}]`, `content` null)
with finish_reason "tool_calls"; streamed, `delta.tool_calls` fragments (the
first with the call's index, id, type, name and empty arguments, then
TOOL_CALL_FRAGMENTS fragments of the arguments' text with the index only),
a chunk with finish_reason "tool_calls", the usage chunk and `[DONE]`. A
request without tools is answered exactly as before tools were answered.

Every answer is built from bytes prepared at import, so the upstream adds as
little CPU as it can to the core it shares with the load generator. There are no artificial
delays, except that requests for the model `slow` wait `SLOW_DELAY_S` first
and those for `held` wait `HELD_DELAY_S` (the overload measurements need an
upstream that holds its workers).

Run as `python -m bench.upstream [--port N]`; it prints
`upstream listening on 127.0.0.1:PORT` when ready and serves until SIGINT or
SIGTERM. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
from typing import Any

from aiohttp import web

SLOW_MODEL = "slow"
"""Requests for this model id are delayed by SLOW_DELAY_S."""
SLOW_DELAY_S = 0.2
HELD_MODEL = "held"
"""Requests for this model id are delayed by HELD_DELAY_S: calls that stay in
flight while the admission measurement overloads faregate."""
HELD_DELAY_S = 2.0
_DELAYS_S = {SLOW_MODEL: SLOW_DELAY_S, HELD_MODEL: HELD_DELAY_S}
PROMPT_TOKENS = 12
"""Reported as usage.prompt_tokens in every answer."""
COMPLETION_TOKENS = 8
"""Reported as usage.completion_tokens in every whole (non-streamed) answer."""
TOKEN_TEXT = " tok"
"""The text of every streamed token."""
MAX_STREAM_TOKENS = 4096
_DEFAULT_STREAM_TOKENS = 16
TOOL_CALL_NAME = "search_code"
"""The function every tool-call answer calls (one of bench/agent_tools.py's)."""
TOOL_CALL_ID = "call_bench_0"
TOOL_CALL_ARGUMENTS = (
    '{"pattern": "def apply_discounts", "path": "server/orders/pricing.py", "max_results": 20}'
)
TOOL_CALL_FRAGMENTS = 20
"""How many fragments a streamed call's arguments arrive in, as a model
sends a few characters per token."""
TOOL_CALL_TOKENS = TOOL_CALL_FRAGMENTS + 1
"""Reported as usage.completion_tokens of every tool-call answer."""


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _sse(value: Any) -> bytes:
    return b"data: " + _json_bytes(value) + b"\n\n"


def _chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


_COMPLETION = _json_bytes(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        },
    }
)


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }


_TOOL_CALL_COMPLETION = _json_bytes(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": TOOL_CALL_ID,
                            "type": "function",
                            "function": {"name": TOOL_CALL_NAME, "arguments": TOOL_CALL_ARGUMENTS},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": _usage(TOOL_CALL_TOKENS),
    }
)


def _argument_fragments(arguments: str, count: int) -> list[str]:
    """`arguments` cut into `count` consecutive pieces of near-equal length."""
    bounds = [len(arguments) * i // count for i in range(count + 1)]
    return [arguments[start:end] for start, end in itertools.pairwise(bounds)]


def _tool_call_fragment(arguments: str) -> bytes:
    return _sse(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}, None))


_TOOL_CALL_EVENTS = (
    _sse(
        _chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": TOOL_CALL_NAME, "arguments": ""},
                    }
                ],
            },
            None,
        )
    ),
    *(
        _tool_call_fragment(piece)
        for piece in _argument_fragments(TOOL_CALL_ARGUMENTS, TOOL_CALL_FRAGMENTS)
    ),
)
"""The streamed call's chunks, one event each: the opening fragment, then the arguments."""
_TOKEN_EVENT = _sse(_chunk({"content": TOKEN_TEXT}, None))
_FINISH_EVENT = _sse(_chunk({}, "length"))
_TOOL_CALLS_FINISH_EVENT = _sse(_chunk({}, "tool_calls"))
_DONE_EVENT = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _usage_event(completion_tokens: int) -> bytes:
    return _sse({**_chunk({}, None), "choices": [], "usage": _usage(completion_tokens)})


_TOOL_CALL_USAGE_EVENT = _usage_event(TOOL_CALL_TOKENS)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """The whole answer, or the SSE stream when the body asks for one."""
    body = json.loads(await request.read())
    delay_s = _DELAYS_S.get(body.get("model", ""))
    if delay_s is not None:
        await asyncio.sleep(delay_s)
    if "tools" in body:
        return await _tool_call(request, stream=bool(body.get("stream")))
    if not body.get("stream"):
        return web.Response(body=_COMPLETION, content_type="application/json")
    # Either cap field, as OpenAI takes either (faregate sends
    # max_completion_tokens by default, the pass-through max_tokens).
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    tokens = min(MAX_STREAM_TOKENS, max(1, int(cap or _DEFAULT_STREAM_TOKENS)))
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    # One write per event, as a real provider sends each token when it has it.
    for _ in range(tokens):
        await response.write(_TOKEN_EVENT)
    await response.write(_FINISH_EVENT)
    await response.write(_usage_event(tokens))
    await response.write(_DONE_EVENT)
    await response.write_eof()
    return response


async def _tool_call(request: web.Request, *, stream: bool) -> web.StreamResponse:
    """The one call, whole or as fragments (the request's tools are not read)."""
    if not stream:
        return web.Response(body=_TOOL_CALL_COMPLETION, content_type="application/json")
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    for event in _TOOL_CALL_EVENTS:
        await response.write(event)
    await response.write(_TOOL_CALLS_FINISH_EVENT)
    await response.write(_TOOL_CALL_USAGE_EVENT)
    await response.write(_DONE_EVENT)
    await response.write_eof()
    return response


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


async def serve(port: int) -> None:
    """Serves on 127.0.0.1:port (0 picks one) until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        bound_port = runner.addresses[0][1]
        print(f"upstream listening on 127.0.0.1:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="The bench's fake OpenAI upstream.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
