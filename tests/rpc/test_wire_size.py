"""rpc/wire_size.py sums exactly what upb writes for a plain request, so
route_call's size comparison never takes a request with more for a plain
one; and every field of the contract is either summed or read when a
request is larger than the sum."""

from __future__ import annotations

from typing import Any

from faregate.v1 import router_pb2
from faregate_server.config.schema import ServerConfig
from faregate_server.rpc.translate import AnyRouteRequest, route_call
from faregate_server.rpc.wire_size import (
    hint_bytes,
    message_bytes,
    request_bytes,
    varint_bytes,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

SUMMED_REQUEST_FIELDS = {
    "model",
    "messages",
    "agent",
    "budget_key",
    "max_output_tokens",
    "temperature",
    "metadata",
    "prefer",
    "min_quality",
    "max_cost_nano_usd",
    "required_capabilities",
    "min_context_tokens",
    "task",
    "fallback",
    "explain",
    "additional_budget_keys",
    "request_id",
}
"""What request_bytes and hint_bytes count."""
READ_REQUEST_FIELDS = {
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "stop",
    "top_p",
    "seed",
    "reasoning",
    "cache_prompt",
}
"""What route_call reads when a request is larger than the sum (uses_options)."""
READ_MESSAGE_FIELDS = {"parts", "tool_calls", "tool_call_id", "reasoning"}


def _sum(request: AnyRouteRequest) -> int:
    """What route_call sums for `request`, from the same values."""
    hinted = bool(
        request.prefer
        or request.task
        or request.fallback
        or request.explain
        or request.required_capabilities
        or request.HasField("min_quality")
        or request.HasField("max_cost_nano_usd")
        or request.HasField("min_context_tokens")
    )
    return request_bytes(
        sum(message_bytes(message.role, message.content) for message in request.messages),
        request.model,
        request.agent,
        request.budget_key,
        request.max_output_tokens if request.HasField("max_output_tokens") else None,
        request.temperature if request.HasField("temperature") else None,
        request.metadata,
        tuple(request.additional_budget_keys),
        request.request_id,
        hint_bytes(request) if hinted else 0,
    )


def test_every_field_is_summed_or_read() -> None:
    for message in (router_pb2.RouteRequest, router_pb2.StreamRouteRequest):
        fields = set(message.DESCRIPTOR.fields_by_name)
        assert fields == SUMMED_REQUEST_FIELDS | READ_REQUEST_FIELDS
    assert set(router_pb2.Message.DESCRIPTOR.fields_by_name) == {
        "role",
        "content",
        *READ_MESSAGE_FIELDS,
    }


def test_varint_sizes() -> None:
    assert [varint_bytes(value) for value in (0, 127, 128, 16383, 16384, 2**63 - 1, -1)] == [
        1,
        1,
        2,
        2,
        3,
        9,
        10,
    ]


_TEXT = st.text(max_size=40) | st.text(st.characters(codec="ascii"), max_size=200)
_INT32 = st.integers(-(2**31), 2**31 - 1)
_INT64 = st.integers(-(2**63), 2**63 - 1)
_ENUM = st.integers(-3, 300)
_DOUBLE = st.floats(allow_nan=False)
_MESSAGE = st.builds(
    router_pb2.Message,
    role=_ENUM,
    content=st.text(max_size=300) | st.text(st.characters(codec="ascii"), max_size=20_000),
)


@st.composite
def _plain_requests(draw: st.DrawFn) -> AnyRouteRequest:
    fields: dict[str, Any] = {
        "messages": draw(st.lists(_MESSAGE, max_size=20)),
        "model": draw(_TEXT),
        "agent": draw(_TEXT),
        "budget_key": draw(_TEXT),
        "metadata": draw(st.dictionaries(_TEXT, _TEXT, max_size=4)),
        "prefer": draw(_ENUM),
        "task": draw(_ENUM),
        "fallback": draw(_ENUM),
        "explain": draw(st.booleans()),
        "required_capabilities": draw(st.lists(_ENUM, max_size=4)),
        "additional_budget_keys": draw(st.lists(_TEXT, max_size=3)),
        "request_id": draw(_TEXT),
    }
    for name, values in (
        ("max_output_tokens", _INT32),
        ("temperature", _DOUBLE),
        ("min_quality", _DOUBLE),
        ("max_cost_nano_usd", _INT64),
        ("min_context_tokens", _INT64),
    ):
        if draw(st.booleans()):
            fields[name] = draw(values)
    if draw(st.booleans()):
        return router_pb2.StreamRouteRequest(**fields)
    return router_pb2.RouteRequest(**fields)


@settings(max_examples=300, deadline=None)
@given(_plain_requests())
@example(router_pb2.RouteRequest(metadata={"": ""}, additional_budget_keys=[""]))
@example(router_pb2.RouteRequest(messages=[router_pb2.Message(content="é" * 200)]))
@example(router_pb2.RouteRequest(max_output_tokens=0, temperature=0.0, min_context_tokens=0))
def test_the_sum_is_what_upb_writes_for_a_plain_request(request: AnyRouteRequest) -> None:
    assert _sum(request) == request.ByteSize()


_EXTRAS: list[dict[str, Any]] = [
    {"tools": [router_pb2.Tool()]},
    {"tool_choice": router_pb2.ToolChoice()},
    {"parallel_tool_calls": False},
    {"response_format": router_pb2.ResponseFormat()},
    {"stop": [""]},
    {"top_p": 0.0},
    {"seed": 0},
    {"reasoning": router_pb2.Reasoning()},
]
_MESSAGE_EXTRAS: list[dict[str, Any]] = [
    {"parts": [router_pb2.ContentPart()]},
    {"tool_calls": [router_pb2.ToolCall()]},
    {"tool_call_id": "c"},
    {"reasoning": [router_pb2.ReasoningBlock()]},
]


@settings(max_examples=100, deadline=None)
@given(
    _plain_requests(),
    st.sampled_from(_EXTRAS) | st.none(),
    st.sampled_from(_MESSAGE_EXTRAS) | st.none(),
)
def test_any_field_beyond_plain_chat_makes_the_request_larger_than_the_sum(
    request: AnyRouteRequest, extra: dict[str, Any] | None, message_extra: dict[str, Any] | None
) -> None:
    if extra is None and message_extra is None:
        return
    if extra is not None:
        # The two requests number their fields alike.
        request.MergeFromString(router_pb2.RouteRequest(**extra).SerializeToString())
    if message_extra is not None:
        request.messages.append(router_pb2.Message(**message_extra))
    assert request.ByteSize() > _sum(request)


def test_a_plain_request_is_read_without_its_extras_and_one_with_them_with_them() -> None:
    """Even the smallest extra (an empty part, a false flag) is seen."""
    plain = router_pb2.RouteRequest(
        budget_key="team", messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")]
    )
    assert route_call(plain, "", ServerConfig()).options is None
    flagged = router_pb2.RouteRequest()
    flagged.CopyFrom(plain)
    flagged.seed = 0
    options = route_call(flagged, "", ServerConfig()).options
    assert options is not None
    assert options.seed == 0
