"""The server's hard input limits: a request over one is INVALID_ARGUMENT with
a BadRequest naming the setting; one exactly at every limit is served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import FaregateError, InvalidArgument

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream

LIMITS = {
    "max_request_bytes": 4096,
    "max_messages": 4,
    "max_message_chars": 1000,
    "max_metadata_entries": 3,
    "max_metadata_key_chars": 8,
    "max_metadata_value_chars": 16,
    "max_output_tokens_limit": 50,
    "max_header_bytes": 2048,
}


@pytest.fixture
async def limited(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    config_data["server"].update(LIMITS)
    async with start_faregate(to_config(config_data)) as faregate:
        yield faregate


async def _errors(faregate: Faregate, request: dict[str, Any]) -> list[FaregateError]:
    """Sends the request as Route and as StreamRoute; returns both errors."""
    errors = []
    with pytest.raises(FaregateError) as caught:
        await faregate.client.route(**request)
    errors.append(caught.value)
    with pytest.raises(FaregateError) as caught:
        await read_stream(faregate.client.stream_route(**request))
    errors.append(caught.value)
    return errors


# Two-byte characters: the limit counts characters, not bytes.
AT_LIMIT = "é" * LIMITS["max_message_chars"]

OVER_LIMIT = [
    pytest.param(
        {"messages": [("user", "hi")] * 5}, "messages", "server.max_messages (4)", id="messages"
    ),
    pytest.param(
        {"messages": AT_LIMIT + "é"},
        "messages[0].content",
        "server.max_message_chars (1000)",
        id="message-chars",
    ),
    pytest.param(
        {"messages": [("user", AT_LIMIT[:900])] * 3},
        "request",
        "server.max_request_bytes (4096)",
        id="request-bytes",
    ),
    pytest.param(
        {"metadata": {f"k{index}": "v" for index in range(4)}},
        "metadata",
        "server.max_metadata_entries (3)",
        id="metadata-entries",
    ),
    pytest.param(
        {"metadata": {"k" * 9: "v"}},
        "metadata['kkkkkkkkk']",
        "server.max_metadata_key_chars (8)",
        id="metadata-key",
    ),
    pytest.param(
        {"metadata": {"trace": "v" * 17}},
        "metadata['trace']",
        "server.max_metadata_value_chars (16)",
        id="metadata-value",
    ),
    pytest.param(
        {"max_output_tokens": 51},
        "max_output_tokens",
        "server.max_output_tokens_limit (50)",
        id="max-output-tokens",
    ),
]


@pytest.mark.parametrize(("change", "field", "names"), OVER_LIMIT)
async def test_request_over_a_limit_is_invalid_argument_naming_the_setting(
    limited: Faregate, upstream: FakeUpstream, change: dict[str, Any], field: str, names: str
) -> None:
    request = {"messages": "hi", "budget_key": "team", "model": "gpt-fake", **change}

    for error in await _errors(limited, request):
        assert isinstance(error, InvalidArgument)
        assert error.reason == "INVALID_REQUEST"
        assert f"exceeds {names}" in error.field_violations[field]

    assert upstream.received == []
    assert await limited.reserved_nano_usd() == 0


async def test_request_at_every_limit_is_served(limited: Faregate) -> None:
    request: dict[str, Any] = {
        "messages": [("system", "é" * 10), ("user", "é" * 10), ("assistant", "ok"), ("user", "hi")],
        "budget_key": "team",
        "model": "gpt-fake",
        "metadata": {"k" * 8: "v" * 16, "a": "", "b": "c"},
        "max_output_tokens": 50,
    }

    reply = await limited.client.route(**request)
    texts = await read_stream(limited.client.stream_route(**request))

    assert reply.output
    assert texts
    message = await limited.client.route(AT_LIMIT, budget_key="team", model="gpt-fake")
    assert message.output


async def test_oversized_grpc_headers_are_refused_by_the_transport(limited: Faregate) -> None:
    stub = router_pb2_grpc.RouterServiceStub(limited.client._channel)
    request = router_pb2.RouteRequest(
        budget_key="team",
        messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")],
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Route(request, metadata=(("x-padding", "p" * 4096),), timeout=10)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await limited.reserved_nano_usd() == 0
    reply = await limited.client.route("still serving?", budget_key="team")
    assert reply.output


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "m" * 257}, "model"),
        ({"agent": "a" * 257}, "agent"),
        ({"budget_key": "b" * 257}, "budget_key"),
        ({"additional_budget_keys": ["ok", "b" * 257]}, "additional_budget_keys[1]"),
    ],
)
async def test_names_longer_than_any_configured_name_are_refused(
    faregate: Faregate, upstream: FakeUpstream, change: dict[str, Any], field: str
) -> None:
    request = {"messages": "hi", "budget_key": "team", **change}

    for error in await _errors(faregate, request):
        assert isinstance(error, InvalidArgument)
        assert error.field_violations[field] == "must be at most 256 characters"
        assert "b" * 257 not in str(error)  # not echoed back

    assert upstream.received == []
    assert await faregate.reserved_nano_usd() == 0
