"""The bench's fake OpenAI-compatible upstream, as cheap as aiohttp allows.

POST /v1/chat/completions answers a fixed small completion with `usage`. With
`"stream": true` it answers SSE instead: one `chat.completion.chunk` event per
token for the request's `max_completion_tokens` (or `max_tokens`) tokens, one
chunk with the finish reason, one with empty `choices` and the usage, then
`data: [DONE]`. Every answer is
built from bytes prepared at import, so the upstream adds as little CPU as it
can to the core it shares with the load generator. There are no artificial
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


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _sse(value: Any) -> bytes:
    return b"data: " + _json_bytes(value) + b"\n\n"


def _chunk(delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
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
_TOKEN_EVENT = _sse(_chunk({"content": TOKEN_TEXT}, None))
_FINISH_EVENT = _sse(_chunk({}, "length"))
_DONE_EVENT = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _usage_event(completion_tokens: int) -> bytes:
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }
    return _sse({**_chunk({}, None), "choices": [], "usage": usage})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """The whole answer, or the SSE stream when the body asks for one."""
    body = json.loads(await request.read())
    delay_s = _DELAYS_S.get(body.get("model", ""))
    if delay_s is not None:
        await asyncio.sleep(delay_s)
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
