"""The servicer's rendering of results and stream items: what an answer holds
beyond text (tool calls, refusal, reasoning, and a stream's fragments of
them) reaches RouteResponse, StreamDelta and StreamFinish; a plain answer's
messages stay as they were."""

from __future__ import annotations

import pytest
from faregate.v1 import router_pb2
from faregate_server.content import (
    AnswerDelta,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    ToolCall,
    ToolCallDelta,
)
from faregate_server.domain import (
    FinishReason,
    RouteResult,
    RoutingDecision,
    StreamFinished,
    Usage,
)
from faregate_server.rpc.router import route_response, stream_event

DECISION = RoutingDecision(
    request_id="r-1",
    model="gpt-fake",
    provider="openai",
    model_version="v1",
    reserved_nano_usd=900,
)
CALLS = (
    ToolCall("call_1", "read_file", '{"path": "a.py"}'),
    ToolCall("call_2", "list_dir", "{}"),
)
REASONING = (ReasoningBlock("first, read", "sig-1"), ReasoningBlock(redacted=b"\x00\xff"))


def _result(**fields: object) -> RouteResult:
    return RouteResult(
        decision=DECISION,
        output=str(fields.pop("output", "")),
        finish_reason=FinishReason.TOOL_CALLS,
        usage=Usage(10, 5),
        cost_nano_usd=100,
        budget_remaining_nano_usd=1000,
        **fields,  # type: ignore[arg-type]
    )


def _finished(**fields: object) -> StreamFinished:
    return StreamFinished(
        usage=Usage(10, 5),
        cost_nano_usd=100,
        budget_remaining_nano_usd=1000,
        finish_reason=FinishReason.TOOL_CALLS,
        **fields,  # type: ignore[arg-type]
    )


def test_a_whole_answer_carries_its_tool_calls_refusal_and_reasoning() -> None:
    response = route_response(
        _result(output="Let me look.", tool_calls=CALLS, refusal="no", reasoning=REASONING)
    )
    assert response.output == "Let me look."
    assert response.finish_reason == router_pb2.FINISH_REASON_TOOL_CALLS
    assert list(response.tool_calls) == [
        router_pb2.ToolCall(id="call_1", name="read_file", arguments_json='{"path": "a.py"}'),
        router_pb2.ToolCall(id="call_2", name="list_dir", arguments_json="{}"),
    ]
    assert response.refusal == "no"
    assert list(response.reasoning) == [
        router_pb2.ReasoningBlock(text="first, read", signature="sig-1"),
        router_pb2.ReasoningBlock(redacted=b"\x00\xff"),
    ]
    assert response.model_used == "gpt-fake"


def test_a_plain_answer_renders_as_it_always_did() -> None:
    response = route_response(_result(output="hello"))
    assert not response.tool_calls
    assert not response.reasoning
    assert response.refusal == ""
    assert [field.name for field, _ in response.ListFields()] == [
        "output",
        "finish_reason",
        "usage",
        "cost_nano_usd",
        "reserved_nano_usd",
        "budget_remaining_nano_usd",
        "model_used",
        "provider",
        "request_id",
        "model_version",
    ]


@pytest.mark.parametrize(
    ("reason", "number"),
    [
        (FinishReason.UNSPECIFIED, router_pb2.FINISH_REASON_UNSPECIFIED),
        (FinishReason.STOP, router_pb2.FINISH_REASON_STOP),
        (FinishReason.LENGTH, router_pb2.FINISH_REASON_LENGTH),
        (FinishReason.CONTENT_FILTER, router_pb2.FINISH_REASON_CONTENT_FILTER),
        (FinishReason.TOOL_CALLS, router_pb2.FINISH_REASON_TOOL_CALLS),
        (FinishReason.REFUSAL, router_pb2.FINISH_REASON_REFUSAL),
        (FinishReason.PAUSE_TURN, router_pb2.FINISH_REASON_PAUSE_TURN),
        (
            FinishReason.CONTEXT_WINDOW_EXCEEDED,
            router_pb2.FINISH_REASON_CONTEXT_WINDOW_EXCEEDED,
        ),
    ],
)
def test_every_finish_reason_has_its_number(
    reason: FinishReason, number: router_pb2.FinishReason.ValueType
) -> None:
    result = RouteResult(DECISION, "", reason, Usage(1, 1), 1, 1)
    assert route_response(result).finish_reason == number
    finished = StreamFinished(Usage(1, 1), 1, 1, reason)
    assert stream_event(finished).finish.finish_reason == number


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (
            ToolCallDelta(0, "call_1", "read_file", ""),
            router_pb2.StreamRouteResponse.StreamDelta(
                tool_call=router_pb2.ToolCallDelta(index=0, id="call_1", name="read_file")
            ),
        ),
        (
            ToolCallDelta(1, arguments_json='{"pa'),
            router_pb2.StreamRouteResponse.StreamDelta(
                tool_call=router_pb2.ToolCallDelta(index=1, arguments_json='{"pa')
            ),
        ),
        (
            ReasoningDelta("hmm"),
            router_pb2.StreamRouteResponse.StreamDelta(reasoning="hmm"),
        ),
        (
            RefusalDelta("I can't"),
            router_pb2.StreamRouteResponse.StreamDelta(refusal="I can't"),
        ),
    ],
)
def test_each_fragment_of_a_stream_is_one_delta(
    delta: AnswerDelta, expected: router_pb2.StreamRouteResponse.StreamDelta
) -> None:
    event = stream_event(delta)
    assert event.WhichOneof("event") == "delta"
    assert event.delta == expected


def test_text_still_streams_as_text() -> None:
    event = stream_event("Hello")
    assert event.delta == router_pb2.StreamRouteResponse.StreamDelta(text="Hello")


def test_a_stream_finish_carries_the_assembled_calls_and_reasoning() -> None:
    finish = stream_event(_finished(tool_calls=CALLS, reasoning=REASONING)).finish
    assert [call.id for call in finish.tool_calls] == ["call_1", "call_2"]
    assert finish.tool_calls[0].arguments_json == '{"path": "a.py"}'
    assert [block.signature for block in finish.reasoning] == ["sig-1", ""]
    assert finish.reasoning[1].redacted == b"\x00\xff"


def test_a_plain_stream_finish_renders_as_it_always_did() -> None:
    finish = stream_event(_finished()).finish
    assert not finish.tool_calls
    assert not finish.reasoning
    assert finish.cost_nano_usd == 100
