"""The parts of an answer beyond its text, out: domain values to faregate.v1.

rpc/router.py builds RouteResponse and each StreamRouteResponse; what an
answer holds beyond text (tool calls, a refusal, reasoning), a stream's
fragments of them, and the parts of its usage beyond input and output
(cached and cache-written input, reasoning) are rendered here. A plain
answer never reaches this module: the servicer comes here only when the
result holds one of these, so a plain answer's rendering costs a few
attribute reads more, and no message is built for what is empty.
"""

from __future__ import annotations

from faregate.v1 import router_pb2

from faregate_server.content import (
    AnswerDelta,
    ReasoningBlock,
    ReasoningDelta,
    ToolCall,
    ToolCallDelta,
)
from faregate_server.domain import RouteResult, StreamFinished, Usage

StreamEvent = router_pb2.StreamRouteResponse


def add_answer_extras(response: router_pb2.RouteResponse, result: RouteResult) -> None:
    """Sets `response`'s tool calls, refusal and reasoning from `result`'s."""
    if result.tool_calls:
        response.tool_calls.extend(tool_calls(result.tool_calls))
    if result.refusal:
        response.refusal = result.refusal
    if result.reasoning:
        response.reasoning.extend(reasoning(result.reasoning))


def add_finish_extras(
    finish: router_pb2.StreamRouteResponse.StreamFinish, finished: StreamFinished
) -> None:
    """Sets a stream's last message's assembled tool calls and reasoning."""
    if finished.tool_calls:
        finish.tool_calls.extend(tool_calls(finished.tool_calls))
    if finished.reasoning:
        finish.reasoning.extend(reasoning(finished.reasoning))


def has_usage_parts(usage: Usage) -> bool:
    """Whether `usage` counts cached or cache-written input or reasoning (the
    hour's writes are part of the writes)."""
    return bool(
        usage.cached_input_tokens or usage.cache_write_input_tokens or usage.reasoning_tokens
    )


def add_usage_parts(message: router_pb2.Usage, usage: Usage) -> None:
    """Sets `message`'s counts beyond input and output from `usage`'s."""
    message.cached_input_tokens = usage.cached_input_tokens
    message.cache_write_input_tokens = usage.cache_write_input_tokens
    message.cache_write_1h_input_tokens = usage.cache_write_1h_input_tokens
    message.reasoning_tokens = usage.reasoning_tokens


def delta_event(delta: AnswerDelta) -> StreamEvent:
    """The stream message carrying one fragment of an answer beyond its text."""
    if isinstance(delta, ToolCallDelta):
        fragment = router_pb2.ToolCallDelta(
            index=delta.index, id=delta.id, name=delta.name, arguments_json=delta.arguments_json
        )
        return StreamEvent(delta=StreamEvent.StreamDelta(tool_call=fragment))
    if isinstance(delta, ReasoningDelta):
        return StreamEvent(delta=StreamEvent.StreamDelta(reasoning=delta.text))
    return StreamEvent(delta=StreamEvent.StreamDelta(refusal=delta.text))


def tool_calls(calls: tuple[ToolCall, ...]) -> list[router_pb2.ToolCall]:
    return [
        router_pb2.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments_json)
        for call in calls
    ]


def reasoning(blocks: tuple[ReasoningBlock, ...]) -> list[router_pb2.ReasoningBlock]:
    return [
        router_pb2.ReasoningBlock(
            text=block.text, signature=block.signature, redacted=block.redacted
        )
        for block in blocks
    ]
