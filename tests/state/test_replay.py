"""Request-id replay records: a result's tool calls, refusal, reasoning and
usage by kind survive the record, and a record without them (every plain answer's, and
every one kept before they existed) reads as an answer with none."""

from __future__ import annotations

import json

from faregate_server.content import ReasoningBlock, ToolCall
from faregate_server.domain import FinishReason, RouteResult, RoutingDecision, Usage
from faregate_server.state.replay import StoredResult, decode_result, encode_result

DECISION = RoutingDecision("r-1", "claude-fake", "anthropic", "v1", 900)
PLAIN_USAGE = Usage(10, 5)


def _result(usage: Usage = PLAIN_USAGE, **fields: object) -> RouteResult:
    return RouteResult(
        DECISION,
        "Reading it.",
        FinishReason.TOOL_CALLS,
        usage,
        120,
        0,
        **fields,  # type: ignore[arg-type]
    )


def _round_trip(result: RouteResult) -> RouteResult:
    return decode_result(StoredResult("fp", encode_result(result), 880))


def test_a_result_with_tool_calls_refusal_and_reasoning_is_replayed_whole() -> None:
    result = _result(
        tool_calls=(ToolCall("toolu_1", "read_file", '{"path": "a.py"}'),),
        refusal="not that",
        reasoning=(
            ReasoningBlock("first, read", "sig"),
            ReasoningBlock(redacted=b"\x00\xffopaque"),
        ),
    )
    replayed = _round_trip(result)
    assert replayed.tool_calls == result.tool_calls
    assert replayed.refusal == "not that"
    assert replayed.reasoning == result.reasoning
    assert replayed.budget_remaining_nano_usd == 880


def test_a_plain_result_is_recorded_as_before() -> None:
    fields = json.loads(encode_result(_result()))
    assert not {"tool_calls", "refusal", "reasoning"} & fields.keys()
    replayed = _round_trip(_result())
    assert (replayed.tool_calls, replayed.refusal, replayed.reasoning) == ((), "", ())
    assert replayed.output == "Reading it."


def test_a_results_usage_keeps_its_parts_and_an_older_one_reads_them_as_zero() -> None:
    usage = Usage(32_010, 40, 30_000, 2_000, 500, reasoning_tokens=30)
    assert _round_trip(_result(usage=usage)).usage == usage
    fields = json.loads(encode_result(_result()))
    fields["usage"] = {"input_tokens": 10, "output_tokens": 5}  # as kept before the parts
    older = StoredResult("fp", json.dumps(fields), 880)
    assert decode_result(older).usage == Usage(10, 5)
