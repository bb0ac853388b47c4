"""A slow reader: faregate reads the upstream at the reader's pace, charges
what reached the reader, ends at the deadline, and takes a caller gone
mid-write as an expected end.

The readers are real gRPC clients reading one message at a time. What a
caller's gRPC library accepted into its HTTP/2 receive window counts as
reached (docs/routing.md, "What a stream is charged for"); the typed client keeps
that window at `STREAM_WINDOW_BOUND_BYTES` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import STREAM_CHANNEL_OPTIONS, DeadlineExceeded, FaregateError, RouteStream
from faregate_server.domain import ChatMessage, Role

from tests.conftest import Faregate, StartFaregate, base_config, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

CHUNK = " tok" * 50
"""50 cl100k tokens, about 210 bytes as a StreamRoute message."""
CHUNK_TOKENS = 50
MESSAGE_BYTES = 200
"""No StreamRoute delta message of CHUNK is smaller than this on the wire."""
STREAM_WINDOW_BOUND_BYTES = 32 * 1024
"""What the typed client's receive window holds at most: twice its 16 KiB
lookahead, for the window update in flight."""
STREAMS = 5
PRICE_IN, PRICE_OUT = 2500, 10_000
"""gpt-fake's nano-USD per input and per output token."""


@pytest.fixture
async def small_buffer_upstream() -> AsyncIterator[FakeUpstream]:
    """A fake whose kernel send buffer is small, so what it wrote is close to
    what faregate took."""
    fake = FakeUpstream(send_buffer_bytes=16 * 1024)
    await fake.start()
    yield fake
    await fake.aclose()


def _long_stream_config(upstream: FakeUpstream, **server: Any) -> dict[str, Any]:
    data = base_config(upstream.base_url)
    data["models"]["gpt-fake"].update(max_output_tokens=500_000, context_window_tokens=1_000_000)
    data["server"].update(server)
    return data


async def _wait_until_settled(faregate: Faregate) -> None:
    async def settled() -> bool:
        return await faregate.reserved_nano_usd() == 0  # no event to wait on

    await eventually(settled, interval_s=0.005)


async def _read_slowly(
    stream: RouteStream,
    read: list[int],
    after_first: Callable[[], Awaitable[None]] | None = None,
) -> FaregateError | None:
    """Reads one message per 20 ms, noting each in `read` (after the first,
    awaits `after_first`); returns the error that ended the stream."""
    try:
        async for _ in stream:
            read.append(1)
            if len(read) == 1 and after_first is not None:
                await after_first()
            await asyncio.sleep(0.02)
    except FaregateError as error:
        return error
    return None


def _charged_output_tokens(faregate: Faregate, spent_nano_usd: int) -> int:
    counter = faregate.running.catalog.deployments["gpt-fake"].counter
    input_tokens = counter.count_messages([ChatMessage(Role.USER, "go")])
    return (spent_nano_usd - input_tokens * PRICE_IN) // PRICE_OUT


async def test_slow_reader_is_charged_for_what_reached_it_not_the_whole_answer(
    start_faregate: StartFaregate, small_buffer_upstream: FakeUpstream
) -> None:
    upstream = small_buffer_upstream
    chunks = 20_000  # about 5 MB of SSE, far more than any buffer on the way
    upstream.default = Script(chunks=[CHUNK] * chunks, usage=None)
    async with start_faregate(to_config(_long_stream_config(upstream))) as faregate:
        stream = faregate.client.stream_route(
            "go", budget_key="team", model="gpt-fake", timeout_s=1.0
        )
        reads: list[int] = []
        error = await _read_slowly(stream, reads)
        read = len(reads)
        assert isinstance(error, DeadlineExceeded)
        await upstream.wait_for_disconnects(1)
        await _wait_until_settled(faregate)

        charged_chunks = _charged_output_tokens(faregate, await faregate.spent_nano_usd())
        charged_chunks //= CHUNK_TOKENS
        # Everything read was charged; beyond it, at most what the reader's
        # window held when the deadline came.
        assert read <= charged_chunks <= read + STREAM_WINDOW_BOUND_BYTES // MESSAGE_BYTES + 1
        # faregate stopped reading the upstream once its own small buffer
        # was full: the kernel buffers on the way, 2 x 64 KiB of aiohttp
        # buffer and one read, nowhere near the 5 MB the upstream had.
        assert upstream.streamed_bytes < 1024 * 1024


async def test_stream_past_its_deadline_ends_at_the_deadline_however_full_the_window(
    start_faregate: StartFaregate, small_buffer_upstream: FakeUpstream
) -> None:
    upstream = small_buffer_upstream
    upstream.default = Script(chunks=[CHUNK] * 20_000, usage=None)
    # The caller sets no deadline: faregate's default is the only one.
    config = to_config(_long_stream_config(upstream, default_deadline_s=0.5))
    async with start_faregate(config) as faregate:
        stream = faregate.client.stream_route("go", budget_key="team", model="gpt-fake")
        handler_ended: list[bool] = []

        async def stop_reading_until_the_handler_ends() -> None:
            # The handler's write blocks on the full window meanwhile; the
            # request's metric is counted once the handler has ended.
            await upstream.wait_for_disconnects(1)
            await eventually(lambda: _requests_ended(faregate, "DEADLINE_EXCEEDED"))
            handler_ended.append(await faregate.reserved_nano_usd() == 0)

        error = await _read_slowly(stream, [], after_first=stop_reading_until_the_handler_ends)

        # It ended at its deadline, the reader's window still full; the
        # reader then got what the window held and the status behind it.
        assert handler_ended == [True]
        assert isinstance(error, DeadlineExceeded)
        assert error.reason == "DEADLINE_EXCEEDED"


async def _requests_ended(faregate: Faregate, outcome: str) -> bool:
    """Whether /metrics counts a StreamRoute that ended with `outcome`."""
    port = faregate.running.http_port
    assert port is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return any(
        line.startswith("faregate_requests_total{")
        and f'outcome="{outcome}"' in line
        and 'rpc="StreamRoute"' in line
        for line in text.splitlines()
    )


async def _slow_raw_stream(target: str, deadline_s: float | None, reads: int) -> int:
    """A grpc.aio StreamRoute over a small window, reading `reads` messages
    slowly; then cancels it (no deadline) or waits for its deadline."""
    async with grpc.aio.insecure_channel(target, options=STREAM_CHANNEL_OPTIONS) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.StreamRouteRequest(
            messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="go")],
            budget_key="team",
            model="gpt-fake",
        )
        call: Any = stub.StreamRoute(request, timeout=deadline_s)
        read = 0
        with contextlib.suppress(grpc.aio.AioRpcError):  # DEADLINE_EXCEEDED
            async for _ in call:
                read += 1
                if read == reads:
                    if deadline_s is None:
                        call.cancel()
                        break
                    await asyncio.sleep(deadline_s)
        return read


@pytest.mark.parametrize("deadline_s", [None, 0.3], ids=["cancelled", "deadline"])
async def test_write_to_a_call_grpc_already_ended_settles_without_an_internal_error(
    start_faregate: StartFaregate,
    small_buffer_upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    deadline_s: float | None,
) -> None:
    upstream = small_buffer_upstream
    upstream.default = Script(chunks=[CHUNK] * 20_000, usage=None)
    async with start_faregate(to_config(_long_stream_config(upstream))) as faregate:
        with caplog.at_level(logging.DEBUG, logger="faregate_server"):
            for _ in range(STREAMS):
                await _slow_raw_stream(faregate.target, deadline_s, reads=5)
            await upstream.wait_for_disconnects(STREAMS)
            await _wait_until_settled(faregate)
            await eventually(lambda: not faregate.running.drain.in_flight, interval_s=0.005)

        assert await faregate.spent_nano_usd() > 0  # the delivered part was charged
        # faregate's own log and gRPC's (the fake upstream may log the
        # disconnects it was made to see).
        errors = [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith(("faregate_server", "grpc"))
        ]
        assert not errors, [r.getMessage() for r in errors]


async def test_a_chunk_written_while_a_shutdown_cut_waits_is_charged(
    start_faregate: StartFaregate, upstream: FakeUpstream
) -> None:
    # A cut waits for the write in progress; that chunk reached the caller,
    # so the stream is charged for it as for every one before it.
    upstream.default = Script(chunks=[CHUNK] * 20_000, usage=None)
    async with (
        start_faregate(to_config(_long_stream_config(upstream))) as faregate,
        grpc.aio.insecure_channel(faregate.target, options=STREAM_CHANNEL_OPTIONS) as channel,
    ):
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.StreamRouteRequest(
            messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="go")],
            budget_key="team",
            model="gpt-fake",
        )
        call: Any = stub.StreamRoute(request, timeout=30)
        await call.read()  # the start; then nothing is read, so writes block
        drain = faregate.running.drain
        await eventually(lambda: any(tracked._writing for tracked in drain._calls))
        [tracked] = drain._calls
        tracked.cut()
        deltas = 0
        with contextlib.suppress(grpc.aio.AioRpcError):
            while (message := await call.read()) is not grpc.aio.EOF:
                deltas += message.WhichOneof("event") == "delta"
        await _wait_until_settled(faregate)
        [(_, record)] = await faregate.running.state.spend("team", "", 10, None)

    assert deltas > 0
    assert record.outcome == "interrupted"
    assert record.output_tokens == deltas * CHUNK_TOKENS
