"""Reading an Anthropic Messages answer: content blocks and stop reasons,
whole (`completion`) or assembled from a stream's events (`StreamAssembly`).

Content blocks: `text` is the answer's text (joined); `tool_use` is a call,
its `arguments_json` the JSON of `input`; `thinking` is a ReasoningBlock
(text and signature), `redacted_thinking` one with `redacted` set to its
`data` (the base64 text's bytes, passed back as they are). Other block types
(server tools' blocks) are skipped.

Stop reasons map as the proto's table says: end_turn and stop_sequence →
STOP, max_tokens → LENGTH, tool_use → TOOL_CALLS, refusal → REFUSAL (the
refusal's text is `stop_details.explanation`, else its category),
pause_turn → PAUSE_TURN, model_context_window_exceeded →
CONTEXT_WINDOW_EXCEEDED; anything else UNSPECIFIED. The usage block is
read by upstream/usage.py (`anthropic_usage`).

A cut-off call is never presented as complete: when the answer ends at its
output cap, a stream's tool_use block left open (no content_block_stop: its
JSON is cut) is not among the assembled calls, and a whole answer's last
block, when it is a tool_use, is dropped too (the cut may have hit it). Its
fragments may already have streamed; the finish reason (LENGTH) says why no
call follows.

Stream invariants: ToolCallDelta.index counts tool_use blocks from 0 in the
order they start, not the content block index (which counts text and
thinking too); the first fragment of a call carries its id and name, the
others its arguments' JSON; an arguments text left empty (a call with no
arguments) is assembled as "{}". A signature arrives in `signature_delta`
just before its block stops and replaces any earlier one, so reasoning
blocks are whole only at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faregate_server.content import (
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    ToolCall,
    ToolCallDelta,
)
from faregate_server.domain import Completion, FinishReason
from faregate_server.upstream.providers.json_codec import encode_json
from faregate_server.upstream.usage import anthropic_usage

STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.REFUSAL,
    "pause_turn": FinishReason.PAUSE_TURN,
    "model_context_window_exceeded": FinishReason.CONTEXT_WINDOW_EXCEEDED,
}
_CUT_SHORT = frozenset({FinishReason.LENGTH, FinishReason.CONTEXT_WINDOW_EXCEEDED})


def completion(answer: Any) -> Completion:
    """The Completion a whole Messages answer is (KeyError, TypeError and the
    like for an answer of the wrong shape: a malformed answer)."""
    finish_reason = STOP_REASONS.get(answer.get("stop_reason"), FinishReason.UNSPECIFIED)
    blocks = answer["content"]
    if finish_reason in _CUT_SHORT and blocks and blocks[-1].get("type") == "tool_use":
        blocks = blocks[:-1]
    texts: list[str] = []
    calls: list[ToolCall] = []
    reasoning: list[ReasoningBlock] = []
    for block in blocks:
        kind = block["type"]
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = encode_json(block.get("input") or {}).decode()
            calls.append(ToolCall(str(block["id"]), str(block["name"]), arguments))
        elif kind == "thinking":
            reasoning.append(
                ReasoningBlock(text=block.get("thinking", ""), signature=block.get("signature", ""))
            )
        elif kind == "redacted_thinking":
            reasoning.append(ReasoningBlock(redacted=str(block["data"]).encode()))
    refusal = ""
    if finish_reason is FinishReason.REFUSAL:
        refusal = refusal_text(answer.get("stop_details"))
    return Completion(
        text="".join(texts),
        finish_reason=finish_reason,
        usage=anthropic_usage(answer.get("usage")),
        tool_calls=tuple(calls),
        refusal=refusal,
        reasoning=tuple(reasoning),
    )


def refusal_text(details: Any) -> str:
    """Why the model refused, from `stop_details`: its explanation, else its
    category, else nothing."""
    if not isinstance(details, dict):
        return ""
    for key in ("explanation", "category"):
        value = details.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


@dataclass(slots=True)
class _Call:
    ordinal: int
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    closed: bool = False


@dataclass(slots=True)
class _Thinking:
    text: list[str] = field(default_factory=list)
    signature: str = ""
    redacted: bytes = b""


class StreamAssembly:
    """The blocks of a streamed answer beyond its text, as its events arrive.

    Each `on_*` takes one event's payload and returns what to relay of it;
    `tool_calls()` and `reasoning()` give the assembled blocks at the end.
    Events for a block index never started are ignored (text deltas are
    the caller's, and need no block).
    """

    __slots__ = ("_blocks", "_calls", "finish_reason")

    def __init__(self) -> None:
        self._blocks: dict[int, _Call | _Thinking] = {}
        self._calls: list[_Call] = []
        self.finish_reason = FinishReason.UNSPECIFIED

    def on_start(self, index: Any, block: Any) -> list[str | ToolCallDelta | ReasoningDelta]:
        """content_block_start: what the block opens with."""
        kind = block.get("type")
        if kind == "text":
            text = block.get("text") or ""
            return [text] if text else []
        if kind == "tool_use":
            call = _Call(len(self._calls), str(block["id"]), str(block["name"]))
            self._calls.append(call)
            self._blocks[index] = call
            return [ToolCallDelta(call.ordinal, id=call.id, name=call.name)]
        if kind == "thinking":
            thinking = _Thinking(signature=block.get("signature") or "")
            self._blocks[index] = thinking
            text = block.get("thinking") or ""
            if text:
                thinking.text.append(text)
                return [ReasoningDelta(text)]
            return []
        if kind == "redacted_thinking":
            self._blocks[index] = _Thinking(redacted=str(block["data"]).encode())
        return []

    def on_delta(self, index: Any, delta: Any) -> ToolCallDelta | ReasoningDelta | None:
        """content_block_delta other than text_delta: the fragment to relay, if any."""
        block = self._blocks.get(index)
        kind = delta.get("type")
        if isinstance(block, _Call):
            if kind == "input_json_delta":
                fragment = delta.get("partial_json") or ""
                if fragment:
                    block.arguments.append(fragment)
                    return ToolCallDelta(block.ordinal, arguments_json=fragment)
        elif isinstance(block, _Thinking):
            if kind == "thinking_delta":
                text = delta.get("thinking") or ""
                if text:
                    block.text.append(text)
                    return ReasoningDelta(text)
            elif kind == "signature_delta":
                block.signature = str(delta.get("signature") or "")
        return None

    def on_stop(self, index: Any) -> None:
        """content_block_stop: a tool call's arguments are complete."""
        block = self._blocks.get(index)
        if isinstance(block, _Call):
            block.closed = True

    def on_message_delta(self, delta: Any) -> RefusalDelta | None:
        """message_delta's `delta`: the stop reason, and a refusal's text to relay."""
        reason = delta.get("stop_reason")
        if not reason:
            return None
        self.finish_reason = STOP_REASONS.get(reason, FinishReason.UNSPECIFIED)
        if self.finish_reason is FinishReason.REFUSAL:
            text = refusal_text(delta.get("stop_details"))
            return RefusalDelta(text) if text else None
        return None

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """Every call whose block closed, by index; a call left open (cut
        off at the output cap) is not one."""
        return tuple(
            ToolCall(call.id, call.name, "".join(call.arguments) or "{}")
            for call in self._calls
            if call.closed
        )

    def reasoning(self) -> tuple[ReasoningBlock, ...]:
        """Every thinking block, in the order they started."""
        return tuple(
            ReasoningBlock(text="".join(block.text), signature=block.signature)
            if not block.redacted
            else ReasoningBlock(redacted=block.redacted)
            for block in self._blocks.values()
            if isinstance(block, _Thinking)
        )
