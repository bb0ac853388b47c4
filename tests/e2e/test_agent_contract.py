"""The agent-loop fields of faregate.v1 through the real server: a request
that breaks one of their rules is INVALID_ARGUMENT (INVALID_REQUEST) with a
BadRequest naming the field, and one that uses a field faregate does not yet
send to its candidates' providers is INVALID_ARGUMENT (MODEL_CANNOT_SERVE)
naming it, never sent upstream without it. Either way nothing reaches the
upstream and nothing is reserved or charged, on Route and StreamRoute alike."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import InvalidArgument
from faregate_client._errors import error_from_rpc

from tests.conftest import Faregate, StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream, Script

SCHEMA = json.dumps({"type": "object", "properties": {"path": {"type": "string"}}})
TOOL = router_pb2.Tool(name="read_file", description="Reads a file.", parameters_json=SCHEMA)
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
async def agent_faregate(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    config_data["server"].update({"max_images": 1, "max_image_bytes": len(PNG)})
    async with start_faregate(to_config(config_data)) as faregate:
        yield faregate


def _user(content: str = "hi", **fields: Any) -> router_pb2.Message:
    return router_pb2.Message(role=router_pb2.ROLE_USER, content=content, **fields)


def _image(**image: Any) -> router_pb2.ContentPart:
    return router_pb2.ContentPart(image=router_pb2.Image(**image))


async def _errors(faregate: Faregate, fields: dict[str, Any]) -> list[InvalidArgument]:
    """Sends the request as Route and as StreamRoute; returns both errors."""
    stub = router_pb2_grpc.RouterServiceStub(faregate.client._channel)
    request = {"budget_key": "team", "messages": [_user()], **fields}
    errors = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Route(router_pb2.RouteRequest(**request), timeout=10)
    errors.append(error_from_rpc(caught.value))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamRoute(router_pb2.StreamRouteRequest(**request), timeout=10):
            pass
    errors.append(error_from_rpc(caught.value))
    typed = [error for error in errors if isinstance(error, InvalidArgument)]
    assert typed == errors
    return typed


INVALID = [
    pytest.param(
        {"tools": [TOOL, TOOL]}, "tools[1].name", "repeats the name of tools[0]", id="tool-names"
    ),
    pytest.param(
        {"tools": [router_pb2.Tool(name="read_file", parameters_json="[1]")]},
        "tools[0].parameters_json",
        "must be a JSON object",
        id="tool-parameters",
    ),
    pytest.param(
        {
            "messages": [
                _user("read a.py"),
                router_pb2.Message(
                    role=router_pb2.ROLE_TOOL, content="print(1)", tool_call_id="call_1"
                ),
            ]
        },
        "messages[1].tool_call_id",
        "answers no call of an earlier assistant message",
        id="unanswerable-tool-turn",
    ),
    pytest.param(
        {"messages": [router_pb2.Message(role=router_pb2.ROLE_TOOL, content="print(1)")]},
        "messages[0].tool_call_id",
        "is required on a tool message",
        id="tool-turn-without-id",
    ),
    pytest.param(
        {"messages": [_user("hi", parts=[router_pb2.ContentPart(text="hi")])]},
        "messages[0].parts",
        "must be empty when content is set",
        id="content-and-parts",
    ),
    pytest.param(
        {
            "messages": [
                _user("", parts=[_image(url="https://e.com/a.png"), _image(url="https://e.com/b")])
            ]
        },
        "messages[0].parts[1].image",
        "exceeds server.max_images (1)",
        id="image-count",
    ),
    pytest.param(
        {"messages": [_user("", parts=[_image(data=PNG + b"\0", media_type="image/png")])]},
        "messages[0].parts[0].image.data",
        f"exceeds server.max_image_bytes ({len(PNG)})",
        id="image-bytes",
    ),
    pytest.param(
        {
            "response_format": router_pb2.ResponseFormat(
                json_schema=router_pb2.JsonSchema(name="answer", schema_json="{not json")
            )
        },
        "response_format.json_schema.schema_json",
        "is not valid JSON",
        id="schema",
    ),
    pytest.param({"stop": [""]}, "stop[0]", "must be 1 to 256 characters", id="stop"),
    pytest.param({"top_p": 1.5}, "top_p", "must be between 0 and 1", id="top-p"),
    pytest.param(
        {"max_output_tokens": 50, "reasoning": router_pb2.Reasoning(budget_tokens=50)},
        "reasoning.budget_tokens",
        "must be less than max_output_tokens (50)",
        id="reasoning-budget",
    ),
]


@pytest.mark.parametrize(("fields", "field", "says"), INVALID)
async def test_a_broken_rule_is_invalid_request_naming_the_field(
    agent_faregate: Faregate, upstream: FakeUpstream, fields: dict[str, Any], field: str, says: str
) -> None:
    for error in await _errors(agent_faregate, fields):
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "INVALID_REQUEST"
        assert says in error.field_violations[field]

    assert upstream.received == []
    assert await agent_faregate.reserved_nano_usd() == 0


UNSENT = [
    # Every field reaches openai models (tests/upstream/test_openai_tools.py);
    # anthropic ones are sent every field but a seed (test_anthropic_agent_loop.py).
    pytest.param({"seed": 7}, "seed", "seed", id="seed"),
]


@pytest.mark.parametrize(("fields", "field", "named"), UNSENT)
async def test_a_field_no_candidate_is_sent_is_refused_not_dropped(
    agent_faregate: Faregate, upstream: FakeUpstream, fields: dict[str, Any], field: str, named: str
) -> None:
    for model in ("claude-fake",):
        for error in await _errors(agent_faregate, {"model": model, **fields}):
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert error.reason == "MODEL_CANNOT_SERVE"
            assert error.field_violations == {
                field: f"faregate does not yet send {named} to anthropic models"
            }
            assert error.metadata == {"model": model}

    assert upstream.received == []
    assert await agent_faregate.reserved_nano_usd() == 0
    assert await agent_faregate.spent_nano_usd() == 0


async def test_a_plain_request_beside_them_is_served(agent_faregate: Faregate) -> None:
    reply = await agent_faregate.client.route("hi", budget_key="team", model="gpt-fake")
    assert reply.output
    assert not reply.tool_calls
    assert reply.refusal == ""


async def test_an_openai_refusal_is_refusal_with_its_text_whole_and_streamed(
    agent_faregate: Faregate, upstream: FakeUpstream
) -> None:
    """OpenAI ends a refusal with "stop": its non-null `refusal` makes it REFUSAL."""
    upstream.default = Script(chunks=[], refusal="I can't help with that.")
    reply = await agent_faregate.client.route("hi", budget_key="team", model="gpt-fake")
    assert reply.finish_reason == router_pb2.FINISH_REASON_REFUSAL
    assert reply.refusal == "I can't help with that."
    assert reply.output == ""

    stub = router_pb2_grpc.RouterServiceStub(agent_faregate.client._channel)
    request = router_pb2.StreamRouteRequest(model="gpt-fake", budget_key="team", messages=[_user()])
    events = [event async for event in stub.StreamRoute(request, timeout=10)]
    assert events[-1].finish.finish_reason == router_pb2.FINISH_REASON_REFUSAL


async def test_a_field_a_newer_client_set_is_refused_not_dropped(
    agent_faregate: Faregate, upstream: FakeUpstream
) -> None:
    message = _user().SerializeToString() + b"\xf8\x06\x01"  # field 111, a varint
    request = router_pb2.RouteRequest(budget_key="team")
    request.messages.add().MergeFromString(message)
    stub = router_pb2_grpc.RouterServiceStub(agent_faregate.client._channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Route(request, timeout=10)
    error = error_from_rpc(caught.value)
    assert isinstance(error, InvalidArgument)
    assert error.reason == "INVALID_REQUEST"
    assert error.field_violations == {
        "messages[0]": (
            "holds fields this server does not know (numbers 111); it would be served without them"
        )
    }
    assert upstream.received == []


async def test_a_flood_of_broken_calls_is_refused_with_a_bounded_bad_request(
    agent_faregate: Faregate, upstream: FakeUpstream
) -> None:
    turn = router_pb2.Message(role=router_pb2.ROLE_USER, tool_calls=[router_pb2.ToolCall()] * 128)
    (error,) = (await _errors(agent_faregate, {"messages": [turn] * 400}))[:1]
    assert error.reason == "INVALID_REQUEST"
    assert len(error.field_violations) == 17
    assert error.field_violations["…"].startswith("and at least ")
    assert upstream.received == []
