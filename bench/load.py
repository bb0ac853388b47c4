"""Closed-loop load: N workers call a target back to back, bounded in count and time.

`GrpcTarget` calls a RouterService with raw stubs over one channel; faregate
and the pass-through serve the same proto, so one class drives both; besides
the plain text requests it sends a request defining five tools
(`agent_tools.py`), whole and streamed, which the fake upstream answers
with a tool call.
`DirectTarget` posts the same chat completion straight to the fake upstream
with aiohttp: the baseline that "added latency" is measured against. Requests
are built once, so the load generator spends as little of its core as it can.

A failed call is counted (and the first failure kept for the report), never
raised: the bench reports what happened. Every call carries its own timeout
and the loop as a whole has an outer one, so nothing can hang.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import grpc
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_server.security.api_keys import new_api_key

from bench.agent_tools import TOOL_PROMPT, TOOLS

PROMPT = "Summarise the plot of Hamlet in one short sentence."
BENCH_MODEL = "bench"
BENCH_BUDGET = "bench"
BENCH_API_KEY, BENCH_KEY_HASH = new_api_key()
UNARY_MAX_OUTPUT_TOKENS = 16
STREAM_TOKENS = 256
TOOL_CALL_MAX_OUTPUT_TOKENS = 64
CALL_TIMEOUT_S = 10.0
_ERROR_TEXT_CHARS = 200

Call = Callable[[], Awaitable[int]]
"""One request; returns how many units it delivered (1, or the deltas of a stream)."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    latencies_s: tuple[float, ...]
    """Latency of each successful call, in completion order."""
    units: int
    """Units delivered by the successful calls (requests, or stream deltas)."""
    failed: int
    first_error: str | None
    elapsed_s: float

    @property
    def completed(self) -> int:
        return len(self.latencies_s)

    @property
    def calls_per_s(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_s(self, fraction: float) -> float:
        """Nearest-rank percentile of the successful latencies (nan when none)."""
        return percentile(self.latencies_s, fraction)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of values at or below."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class _Tally:
    issued: int = 0
    units: int = 0
    failed: int = 0
    first_error: str | None = None
    latencies_s: list[float] = field(default_factory=list)


async def closed_loop(
    call: Call, *, concurrency: int, max_calls: int, max_duration_s: float
) -> LoadResult:
    """Runs `call` from `concurrency` workers until max_calls were issued or time is up."""
    loop = asyncio.get_running_loop()
    tally = _Tally()
    started_s = loop.time()
    deadline_s = started_s + max_duration_s

    async def worker() -> None:
        while tally.issued < max_calls and loop.time() < deadline_s:
            tally.issued += 1
            call_started_s = time.perf_counter()
            try:
                units = await call()
            except Exception as error:  # counted and reported, not raised
                tally.failed += 1
                if tally.first_error is None:
                    tally.first_error = describe_error(error)
                continue
            tally.latencies_s.append(time.perf_counter() - call_started_s)
            tally.units += units

    async with asyncio.timeout(max_duration_s + CALL_TIMEOUT_S), asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return LoadResult(
        latencies_s=tuple(tally.latencies_s),
        units=tally.units,
        failed=tally.failed,
        first_error=tally.first_error,
        elapsed_s=loop.time() - started_s,
    )


def describe_error(error: Exception) -> str:
    """A one-line description of a failed call."""
    if isinstance(error, grpc.aio.AioRpcError):
        text = f"{error.code().name}: {error.details()}"
    else:
        text = f"{type(error).__name__}: {error}"
    return text[:_ERROR_TEXT_CHARS]


_AUTH = (("authorization", f"Bearer {BENCH_API_KEY}"),)


def _messages(prompt: str = PROMPT) -> list[router_pb2.Message]:
    return [router_pb2.Message(role=router_pb2.ROLE_USER, content=prompt)]


class NoToolCallError(Exception):
    """A tool-call request was answered without a tool call."""


class GrpcTarget:
    """Route and StreamRoute over one grpc.aio channel, with prebuilt requests."""

    def __init__(
        self, channel: grpc.aio.Channel, *, model: str = BENCH_MODEL, budget_key: str = BENCH_BUDGET
    ) -> None:
        self._stub = router_pb2_grpc.RouterServiceStub(channel)
        self._route_request = router_pb2.RouteRequest(
            model=model,
            messages=_messages(),
            budget_key=budget_key,
            max_output_tokens=UNARY_MAX_OUTPUT_TOKENS,
        )
        self._stream_request = router_pb2.StreamRouteRequest(
            model=model,
            messages=_messages(),
            budget_key=budget_key,
            max_output_tokens=STREAM_TOKENS,
        )
        self._tool_route_request = router_pb2.RouteRequest(
            model=model,
            messages=_messages(TOOL_PROMPT),
            budget_key=budget_key,
            max_output_tokens=TOOL_CALL_MAX_OUTPUT_TOKENS,
            tools=TOOLS,
        )
        self._tool_stream_request = router_pb2.StreamRouteRequest(
            model=model,
            messages=_messages(TOOL_PROMPT),
            budget_key=budget_key,
            max_output_tokens=TOOL_CALL_MAX_OUTPUT_TOKENS,
            tools=TOOLS,
        )

    async def route(self) -> int:
        await self._stub.Route(self._route_request, timeout=CALL_TIMEOUT_S, metadata=_AUTH)
        return 1

    async def stream(self) -> int:
        """Reads a whole StreamRoute; returns how many deltas arrived."""
        deltas = 0
        call = self._stub.StreamRoute(self._stream_request, timeout=CALL_TIMEOUT_S, metadata=_AUTH)
        async for event in call:
            if event.WhichOneof("event") == "delta":
                deltas += 1
        return deltas

    async def route_with_tools(self) -> int:
        """A Route defining the five tools, answered with a tool call."""
        response = await self._stub.Route(
            self._tool_route_request, timeout=CALL_TIMEOUT_S, metadata=_AUTH
        )
        if not response.tool_calls:
            raise NoToolCallError("a Route with tools came back without a tool call")
        return 1

    async def stream_tool_call(self) -> int:
        """Reads a whole StreamRoute defining the tools, answered with a streamed
        tool call; returns 1, the call (its fragments are not units)."""
        finish = None
        call = self._stub.StreamRoute(
            self._tool_stream_request, timeout=CALL_TIMEOUT_S, metadata=_AUTH
        )
        async for event in call:
            if event.WhichOneof("event") == "finish":
                finish = event.finish
        if finish is None or not finish.tool_calls:
            raise NoToolCallError("a StreamRoute with tools finished without a tool call")
        return 1


class DirectTarget:
    """The same unary chat completion, posted straight to the upstream."""

    def __init__(self, session: aiohttp.ClientSession, api_base: str) -> None:
        self._session = session
        self._url = f"{api_base}/chat/completions"
        self._body = json.dumps(
            {
                "model": BENCH_MODEL,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": UNARY_MAX_OUTPUT_TOKENS,
            }
        ).encode()
        self._headers = {"Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)

    async def route(self) -> int:
        async with self._session.post(
            self._url, data=self._body, headers=self._headers, timeout=self._timeout
        ) as response:
            response.raise_for_status()
            json.loads(await response.read())
        return 1
