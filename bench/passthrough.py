"""The baseline: `faregate.v1.RouterService` with no logic, over grpc.aio.

Route posts the request to the upstream's chat completions with one shared
aiohttp session and answers with the output, usage and model; StreamRoute
posts it with `"stream": true`, parses each SSE chunk's JSON minimally and
sends one gRPC message per upstream text chunk, framed like faregate's (one
`start`, the `delta`s, one `finish` with the usage) so both relay the same
number of messages. A request's tools are sent as OpenAI's `tools` (the
`parameters_json` parsed, as it must go as an object); a tool call comes back
in RouteResponse.tool_calls, or streamed as one ToolCallDelta per upstream
fragment with the assembled calls in the `finish`, as faregate relays them.
No validation, no budgets, no pools, no token counting: whatever faregate
costs beyond this server is the price of its logic.

Run as `python -m bench.passthrough --upstream URL [--listen HOST:PORT]`;
it prints `passthrough listening on HOST:PORT` when ready and serves until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from faregate.v1 import router_pb2, router_pb2_grpc

_ROLES = {
    router_pb2.ROLE_SYSTEM: "system",
    router_pb2.ROLE_USER: "user",
    router_pb2.ROLE_ASSISTANT: "assistant",
}
_HEADERS = {"Content-Type": "application/json"}
_DEFAULT_MAX_TOKENS = 256
_CONNECTIONS = 512

StreamEvent = router_pb2.StreamRouteResponse
AnyRequest = router_pb2.RouteRequest | router_pb2.StreamRouteRequest


class PassThroughServicer(router_pb2_grpc.RouterServiceServicer):
    """Relays each call to one OpenAI-compatible upstream."""

    def __init__(self, session: aiohttp.ClientSession, api_base: str) -> None:
        self._session = session
        self._url = f"{api_base}/chat/completions"

    async def Route(
        self,
        request: router_pb2.RouteRequest,
        context: grpc.aio.ServicerContext[router_pb2.RouteRequest, router_pb2.RouteResponse],
    ) -> router_pb2.RouteResponse:
        async with self._session.post(
            self._url, data=json.dumps(_body(request, stream=False)), headers=_HEADERS
        ) as response:
            if response.status != 200:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream {response.status}")
            answer = json.loads(await response.read())
        usage = answer["usage"]
        message = answer["choices"][0]["message"]
        return router_pb2.RouteResponse(
            output=message["content"] or "",
            usage=router_pb2.Usage(
                input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]
            ),
            model_used=answer.get("model", request.model),
            tool_calls=[
                router_pb2.ToolCall(
                    id=call["id"],
                    name=call["function"]["name"],
                    arguments_json=call["function"]["arguments"],
                )
                for call in message.get("tool_calls") or ()
            ],
        )

    async def StreamRoute(
        self,
        request: router_pb2.StreamRouteRequest,
        context: grpc.aio.ServicerContext[
            router_pb2.StreamRouteRequest, router_pb2.StreamRouteResponse
        ],
    ) -> AsyncIterator[router_pb2.StreamRouteResponse]:
        usage = router_pb2.Usage()
        calls: dict[int, router_pb2.ToolCall] = {}
        async with self._session.post(
            self._url, data=json.dumps(_body(request, stream=True)), headers=_HEADERS
        ) as response:
            if response.status != 200:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"upstream {response.status}")
            yield StreamEvent(start=StreamEvent.StreamStart(model_used=request.model))
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].rstrip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk["choices"]:
                    delta = choice["delta"]
                    text = delta.get("content")
                    if text:
                        yield StreamEvent(delta=StreamEvent.StreamDelta(text=text))
                    elif "tool_calls" in delta:
                        for fragment in delta["tool_calls"]:
                            yield StreamEvent(
                                delta=StreamEvent.StreamDelta(tool_call=_fragment(fragment, calls))
                            )
                if chunk.get("usage"):
                    usage.input_tokens = chunk["usage"]["prompt_tokens"]
                    usage.output_tokens = chunk["usage"]["completion_tokens"]
        yield StreamEvent(finish=StreamEvent.StreamFinish(usage=usage, tool_calls=calls.values()))


def _fragment(
    fragment: dict[str, Any], calls: dict[int, router_pb2.ToolCall]
) -> router_pb2.ToolCallDelta:
    """One upstream `delta.tool_calls` fragment as a ToolCallDelta, appended to
    its call in `calls` (by the upstream's index, trusted as it comes)."""
    index = fragment["index"]
    function = fragment.get("function") or {}
    delta = router_pb2.ToolCallDelta(
        index=index,
        id=fragment.get("id") or "",
        name=function.get("name") or "",
        arguments_json=function.get("arguments") or "",
    )
    call = calls.get(index)
    if call is None:
        calls[index] = router_pb2.ToolCall(
            id=delta.id, name=delta.name, arguments_json=delta.arguments_json
        )
    else:
        call.arguments_json += delta.arguments_json
    return delta


def _body(request: AnyRequest, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [
            {"role": _ROLES.get(message.role, "user"), "content": message.content}
            for message in request.messages
        ],
        "max_tokens": (
            request.max_output_tokens
            if request.HasField("max_output_tokens")
            else _DEFAULT_MAX_TOKENS
        ),
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": json.loads(tool.parameters_json),
                },
            }
            for tool in request.tools
        ]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def serve(upstream_api_base: str, listen: str) -> None:
    """Serves on `listen` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    connector = aiohttp.TCPConnector(limit=_CONNECTIONS, limit_per_host=_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        server = grpc.aio.server()
        router_pb2_grpc.add_RouterServiceServicer_to_server(
            PassThroughServicer(session, upstream_api_base.rstrip("/")), server
        )
        port = server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        try:
            host = listen.rsplit(":", 1)[0]
            print(f"passthrough listening on {host}:{port}", flush=True)
            await stop.wait()
        finally:
            await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description="A no-logic RouterService pass-through.")
    parser.add_argument("--upstream", required=True, help="api base, e.g. http://127.0.0.1:N/v1")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (default: any port)")
    args = parser.parse_args()
    asyncio.run(serve(args.upstream, args.listen))


if __name__ == "__main__":
    main()
