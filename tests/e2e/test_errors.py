"""Bad input, unknown names and upstream failures: a clear status with rich
details, nothing changed, no reservation leaked, the server still serving."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import (
    FailedPrecondition,
    FaregateError,
    InvalidArgument,
    NotFound,
    StreamInterrupted,
    Unavailable,
)

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script

USER = router_pb2.ROLE_USER


async def _call(faregate: Faregate, rpc: str, request: dict[str, Any]) -> FaregateError:
    """Sends the request as Route or StreamRoute; returns the error it must raise."""
    if rpc == "route":
        with pytest.raises(FaregateError) as caught:
            await faregate.client.route(**request)
    else:
        with pytest.raises(FaregateError) as caught:
            await read_stream(faregate.client.stream_route(**request))
    return caught.value


async def _call_both(faregate: Faregate, request: dict[str, Any]) -> list[FaregateError]:
    """Sends the same request as Route and as StreamRoute; returns both errors."""
    return [await _call(faregate, rpc, request) for rpc in ("route", "stream")]


BAD_REQUESTS = [
    pytest.param({"messages": []}, "messages", id="no-messages"),
    pytest.param({"messages": [("", "hi")]}, "messages[0].role", id="unspecified-role"),
    pytest.param({"messages": [("user", ""), ("user", "")]}, "messages", id="all-empty"),
    pytest.param({"max_output_tokens": -5}, "max_output_tokens", id="negative-max-output"),
    pytest.param({"max_output_tokens": 0}, "max_output_tokens", id="zero-max-output"),
    pytest.param({"max_output_tokens": 2_000_000}, "max_output_tokens", id="huge-max-output"),
    pytest.param({"budget_key": ""}, "budget_key", id="no-budget-key"),
    pytest.param({"temperature": -1.0}, "temperature", id="negative-temperature"),
    pytest.param({"messages": "x" * (1 << 20)}, "request", id="oversize-request"),
]


@pytest.mark.parametrize(("change", "field"), BAD_REQUESTS)
async def test_bad_input_is_invalid_argument_naming_the_field(
    faregate: Faregate, upstream: FakeUpstream, change: dict[str, Any], field: str
) -> None:
    request = {"messages": "hello", "budget_key": "team", "model": "gpt-fake", **change}

    for error in await _call_both(faregate, request):
        assert isinstance(error, InvalidArgument)
        assert error.reason == "INVALID_REQUEST"
        assert field in error.field_violations

    assert upstream.received == []
    assert await faregate.reserved_nano_usd() == 0
    assert await faregate.spent_nano_usd() == 0
    reply = await faregate.client.route("still serving?", budget_key="team")
    assert reply.output


async def test_unknown_role_number_is_rejected(faregate: Faregate) -> None:
    stub = router_pb2_grpc.RouterServiceStub(faregate.client._channel)
    request = router_pb2.RouteRequest(
        budget_key="team",
        messages=[router_pb2.Message(role=42, content="hi")],  # type: ignore[arg-type]
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Route(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].role" in (caught.value.details() or "")


async def test_unknown_model_is_not_found(faregate: Faregate) -> None:
    for error in await _call_both(
        faregate, {"messages": "hi", "budget_key": "team", "model": "gpt-9"}
    ):
        assert isinstance(error, NotFound)
        assert error.reason == "MODEL_NOT_FOUND"
        assert error.metadata == {"model": "gpt-9"}


async def test_unknown_budget_is_failed_precondition(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    for error in await _call_both(faregate, {"messages": "hi", "budget_key": "nobody"}):
        assert isinstance(error, FailedPrecondition)
        assert error.reason == "BUDGET_NOT_FOUND"
        assert error.metadata == {"budgetKey": "nobody"}
    assert upstream.received == []


async def test_request_that_cannot_fit_the_model_names_max_output_tokens(
    faregate: Faregate,
) -> None:
    for error in await _call_both(
        faregate,
        {"messages": "hi", "budget_key": "team", "model": "gpt-fake", "max_output_tokens": 101},
    ):
        assert isinstance(error, InvalidArgument)
        assert error.reason == "MODEL_CANNOT_SERVE"
        assert "max_output_tokens" in error.field_violations
    assert await faregate.reserved_nano_usd() == 0


UPSTREAM_FAILURES = [
    pytest.param(400, {}, InvalidArgument, "UPSTREAM_REJECTED", id="400"),
    pytest.param(401, {}, FailedPrecondition, "UPSTREAM_AUTH_FAILED", id="401"),
    pytest.param(429, {"Retry-After": "7"}, Unavailable, "UPSTREAM_RATE_LIMITED", id="429"),
    pytest.param(500, {}, Unavailable, "UPSTREAM_UNAVAILABLE", id="500"),
    pytest.param(529, {}, Unavailable, "UPSTREAM_UNAVAILABLE", id="529"),
]


@pytest.mark.parametrize("rpc", ["route", "stream"])
@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
@pytest.mark.parametrize(("status", "headers", "error_type", "reason"), UPSTREAM_FAILURES)
async def test_upstream_http_errors_map_to_documented_statuses(
    faregate: Faregate,
    upstream: FakeUpstream,
    rpc: str,
    model: str,
    status: int,
    headers: dict[str, str],
    error_type: type[FaregateError],
    reason: str,
) -> None:
    upstream.default = Script(status=status, headers=headers)

    for error in [
        await _call(faregate, rpc, {"messages": "hi", "budget_key": "team", "model": model})
    ]:
        assert type(error) is error_type
        assert error.reason == reason
        assert error.metadata["httpStatus"] == str(status)
        assert "sk-" not in error.message
        if status == 429:
            assert isinstance(error, Unavailable)
            assert error.retry_after_s == 7.0

    assert await faregate.reserved_nano_usd() == 0
    assert await faregate.spent_nano_usd() == 0


async def test_rate_limited_status_carries_the_pushback_trailer(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(status=429, headers={"Retry-After": "2"})
    stub = router_pb2_grpc.RouterServiceStub(faregate.client._channel)
    request = router_pb2.RouteRequest(
        budget_key="team", messages=[router_pb2.Message(role=USER, content="hi")]
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Route(request)

    trailers = dict(caught.value.trailing_metadata() or ())
    assert trailers["grpc-retry-pushback-ms"] == "2000"


@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
async def test_error_event_mid_stream_aborts_and_charges_the_delivered_part(
    faregate: Faregate, upstream: FakeUpstream, model: str
) -> None:
    upstream.default = Script(chunks=["a", "b", "c", "d"], error_event_after=2)
    received: list[str] = []

    stream = faregate.client.stream_route("go", budget_key="team", model=model)
    with pytest.raises(StreamInterrupted) as caught:
        await read_stream(stream, received)

    assert received == ["a", "b"]
    assert caught.value.reason == "STREAM_INTERRUPTED"
    assert await faregate.spent_nano_usd() > 0
    assert await faregate.reserved_nano_usd() == 0


@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
async def test_error_event_before_output_is_unavailable_and_free(
    faregate: Faregate, upstream: FakeUpstream, model: str
) -> None:
    upstream.default = Script(error_event_after=0)

    with pytest.raises(Unavailable) as caught:
        async for _ in faregate.client.stream_route("go", budget_key="team", model=model):
            pass

    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
    assert await faregate.spent_nano_usd() == 0
    assert await faregate.reserved_nano_usd() == 0


async def test_connection_dropped_mid_stream_aborts_and_charges_the_delivered_part(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["a", "b", "c"], drop_after=1)

    with pytest.raises(StreamInterrupted):
        async for _ in faregate.client.stream_route("go", budget_key="team", model="gpt-fake"):
            pass

    assert await faregate.spent_nano_usd() > 0
    assert await faregate.reserved_nano_usd() == 0


async def test_stream_stalled_between_tokens_is_cut_and_charged_for_what_it_delivered(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["a", "b", "c"], stall_after=2)  # idle_timeout_s is 1.0
    received: list[str] = []

    stream = faregate.client.stream_route("go", budget_key="team", model="gpt-fake")
    with pytest.raises(StreamInterrupted):
        await read_stream(stream, received)

    assert received == ["a", "b"]
    # Input counted by tiktoken plus two delivered tokens, at gpt-fake's prices.
    assert await faregate.spent_nano_usd() > 2 * 10_000
    assert await faregate.reserved_nano_usd() == 0


async def test_stream_stalled_before_output_is_unavailable(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["a"], stall_after=0)

    with pytest.raises(Unavailable) as caught:
        async for _ in faregate.client.stream_route("go", budget_key="team", model="gpt-fake"):
            pass

    assert caught.value.reason == "UPSTREAM_STALLED"
    assert await faregate.spent_nano_usd() == 0
    assert await faregate.reserved_nano_usd() == 0


async def test_garbage_body_is_unavailable(faregate: Faregate, upstream: FakeUpstream) -> None:
    upstream.default = Script(raw_sse=[b"data: {not json\n\n"])

    with pytest.raises(Unavailable) as caught:
        async for _ in faregate.client.stream_route("go", budget_key="team", model="gpt-fake"):
            pass

    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
    assert await faregate.reserved_nano_usd() == 0


async def test_upstream_refusing_connections_is_unavailable(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    config_data["models"]["gpt-fake"]["api_base"] = "http://127.0.0.1:9/v1"
    async with start_faregate(to_config(config_data)) as faregate:
        for error in await _call_both(
            faregate, {"messages": "hi", "budget_key": "team", "model": "gpt-fake"}
        ):
            assert isinstance(error, Unavailable)
            assert error.reason == "UPSTREAM_UNAVAILABLE"
        assert await faregate.reserved_nano_usd() == 0


async def _garbage_http_server() -> asyncio.Server:
    """Answers every request with a broken HTTP response."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
async def test_api_keys_never_reach_the_client_even_from_broken_http(
    start_faregate: StartFaregate, config_data: dict[str, Any], model: str
) -> None:
    server = await _garbage_http_server()
    port = server.sockets[0].getsockname()[1]
    config_data["models"]["gpt-fake"]["api_base"] = f"http://127.0.0.1:{port}/v1"
    config_data["models"]["claude-fake"]["api_base"] = f"http://127.0.0.1:{port}"
    async with server, start_faregate(to_config(config_data)) as faregate:
        with pytest.raises(Unavailable) as caught:
            await faregate.client.route("hi", budget_key="team", model=model)

        assert "sk-test-openai" not in str(caught.value)
        assert "sk-ant-test" not in str(caught.value)


@pytest.mark.parametrize("value", ["inf", "1e300", "86400"])
async def test_absurd_retry_after_is_capped(
    faregate: Faregate, upstream: FakeUpstream, value: str
) -> None:
    upstream.default = Script(status=429, headers={"Retry-After": value})

    with pytest.raises(Unavailable) as caught:
        await faregate.client.route("hi", budget_key="team", model="gpt-fake")

    assert caught.value.reason == "UPSTREAM_RATE_LIMITED"
    assert caught.value.retry_after_s is not None
    assert caught.value.retry_after_s <= 3600
