"""OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp, Groq, Together…).

POST {api_base}/chat/completions, whole or as SSE with
`stream_options.include_usage`, whose last chunk carries the usage and whose
end is `data: [DONE]` (a server that sends usage in every chunk sends running
totals: the last one is the stream's). upstream/usage.py reads the usage
block. An error object inside the stream is an upstream
failure. The request body is openai_request.py's.

What comes back beyond text:
- Tool calls: `message.tool_calls` (whole); `delta.tool_calls` fragments
  (streamed), assembled by `ToolCallAssembler` and relayed as ToolCallDeltas,
  the assembled calls in the StreamEnd. An answer with calls finishes
  TOOL_CALLS whatever its finish_reason says (OpenAI itself says "stop" when
  tool_choice names a function), unless it was cut short (LENGTH).
- A refusal ends with finish_reason "stop" like any answer: it is told apart
  by a non-null `message.refusal` (whole) or `delta.refusal` (streamed), and
  is FinishReason.REFUSAL; streamed, its text is relayed as RefusalDeltas.
- Reasoning, which OpenAI itself does not return but compatible servers do,
  as `reasoning_content` (DeepSeek, llama.cpp, older vLLM) or `reasoning`
  (vLLM since late 2025, OpenRouter); `reasoning_content` is read first.

Invariant: a plain text chunk costs one dict lookup beyond its text, as it
did before any of this (`_stream`'s fast path).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp

from faregate_server.config.schema import ModelConfig
from faregate_server.content import (
    AnswerDelta,
    Feature,
    GenerationOptions,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    ToolCall,
    ToolCallDelta,
)
from faregate_server.domain import (
    Completion,
    FinishReason,
    StreamEnd,
    UpstreamRequest,
)
from faregate_server.upstream.providers.base import (
    JsonEndpoint,
    UpstreamError,
    UpstreamErrorKind,
    error_excerpt,
    translate_transport_errors,
)
from faregate_server.upstream.providers.json_codec import decode_json, encode_json
from faregate_server.upstream.providers.openai_request import request_body
from faregate_server.upstream.providers.refusals import Refusal, temperature_refusal
from faregate_server.upstream.redaction import Redactor
from faregate_server.upstream.usage import openai_usage

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}
_REASONING_FIELDS = ("reasoning_content", "reasoning")


class OpenAIProvider:
    """One model behind an OpenAI-compatible API."""

    carried_features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.TOOLS,
            Feature.TOOL_CHOICE,
            Feature.PARALLEL_TOOL_CALLS,
            Feature.TOOL_CALLS,
            Feature.TOOL_RESULTS,
            Feature.IMAGES,
            Feature.CONTENT_PARTS,
            Feature.RESPONSE_FORMAT,
            Feature.STOP,
            Feature.TOP_P,
            Feature.SEED,
            Feature.REASONING,
            Feature.REASONING_BLOCKS,
        }
    )
    """Every feature of the contract (see openai_request.py for how each is sent)."""

    def refusal(
        self, temperature: float | None, options: GenerationOptions | None, max_output_tokens: int
    ) -> Refusal | None:
        """OpenAI takes 0 to 2, as compatible servers do; per-model rules are config's
        (`refuses`)."""
        return temperature_refusal(temperature, 2.0, "openai")

    def __init__(
        self, session: aiohttp.ClientSession, model: ModelConfig, redactor: Redactor
    ) -> None:
        headers = {"Authorization": f"Bearer {model.api_key}"} if model.api_key else {}
        self._endpoint = JsonEndpoint(
            session, f"{model.api_base}/chat/completions", headers, model, redactor
        )
        self._redactor = redactor
        self._cap_field = model.output_cap_field.value

    async def complete(self, request: UpstreamRequest) -> Completion:
        with translate_transport_errors():
            answer = await self._endpoint.post(request_body(request, self._cap_field, stream=False))
            choice = answer["choices"][0]
            message = choice["message"]
            refusal = message.get("refusal")
            tool_calls = tuple(
                _whole_call(number, raw)
                for number, raw in enumerate(message.get("tool_calls") or ())
            )
            reason = _FINISH_REASONS.get(choice.get("finish_reason"), FinishReason.UNSPECIFIED)
            reasoning = _reasoning_text(message)
            return Completion(
                text=message.get("content") or "",
                finish_reason=_finish(reason, refused=refusal is not None, called=bool(tool_calls)),
                usage=openai_usage(answer.get("usage")),
                tool_calls=tool_calls,
                refusal=refusal if isinstance(refusal, str) else "",
                reasoning=(ReasoningBlock(text=reasoning),) if reasoning else (),
            )

    async def stream(
        self, request: UpstreamRequest
    ) -> AsyncGenerator[str | AnswerDelta | StreamEnd, None]:
        finish_reason = FinishReason.UNSPECIFIED
        # The last usage block seen, read once at the end: a server that sends
        # one in every chunk (Gemini's) sends running totals, never to be added.
        usage: object = None
        reported = request.reported
        if reported is not None:
            reported.read = openai_usage
        finished = False
        refused = False
        calls = ToolCallAssembler()
        reasoning: list[str] = []
        body = request_body(request, self._cap_field, stream=True)
        with translate_transport_errors():
            async with self._endpoint.open_stream(body) as events:
                async for event in events:
                    if event.data == "[DONE]":
                        finished = True
                        break
                    chunk = decode_json(event.data)
                    if "error" in chunk:
                        raise UpstreamError(
                            UpstreamErrorKind.UNAVAILABLE,
                            "upstream error mid-stream: "
                            + error_excerpt(_error_message(chunk["error"]), self._redactor),
                        )
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        text = delta.get("content")
                        if text:
                            yield text
                            if len(delta) == 1 and not choice.get("finish_reason"):
                                continue  # the plain text path: nothing else to look at
                        fragments = delta.get("tool_calls")
                        if fragments:
                            for fragment in fragments:
                                call_delta = calls.add(fragment)
                                if call_delta is not None:
                                    yield call_delta
                        refusal = delta.get("refusal")
                        if refusal is not None:
                            refused = True
                            if refusal:
                                yield RefusalDelta(refusal)
                        thought = _reasoning_text(delta)
                        if thought:
                            reasoning.append(thought)
                            yield ReasoningDelta(thought)
                        if choice.get("finish_reason"):
                            finish_reason = _FINISH_REASONS.get(
                                choice["finish_reason"], FinishReason.UNSPECIFIED
                            )
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                        if reported is not None:
                            reported.raw = usage
        if not finished:
            raise UpstreamError(
                UpstreamErrorKind.UNAVAILABLE, "upstream stream ended before [DONE]"
            )
        tool_calls = calls.calls()
        yield StreamEnd(
            _finish(finish_reason, refused=refused, called=bool(tool_calls)),
            openai_usage(usage),
            tool_calls,
            (ReasoningBlock(text="".join(reasoning)),) if reasoning else (),
        )


@dataclass(slots=True)
class _Call:
    id: str
    name: str
    id_from_upstream: bool
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Assembles a stream's `delta.tool_calls` fragments into whole calls.

    By the fragment's `index`, never by arrival order, so interleaved calls
    come apart; `id` and `name` are kept from the first fragment that has
    them (repeats are not appended). Compatible servers' variants are
    tolerated: no `index` (a fragment with a new id begins a new call, any
    other continues the last), the same `index` for every call (a different
    id there begins a new call), a whole call in one fragment, arguments as
    a JSON object rather than its text, and no id at all (one is made up,
    `call_<n>`, so a tool turn can answer the call).

    Calls are numbered from 0 in the order they began: that is the
    ToolCallDelta's `index`, whatever the upstream's was.
    """

    def __init__(self) -> None:
        self._calls: list[_Call] = []
        self._by_wire_index: dict[int, int] = {}

    def add(self, fragment: Any) -> ToolCallDelta | None:
        """Takes one fragment; returns what it adds, or None when nothing."""
        raw_id = fragment.get("id") or ""
        function = fragment.get("function") or {}
        name = function.get("name") or ""
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            arguments = encode_json(arguments).decode()
        number = self._number(fragment.get("index"), raw_id)
        if number is None:
            number = len(self._calls)
            call = _Call(raw_id or f"call_{number}", name, bool(raw_id), [arguments])
            self._calls.append(call)
            wire_index = fragment.get("index")
            if isinstance(wire_index, int):
                self._by_wire_index[wire_index] = number
            return ToolCallDelta(number, call.id, name, arguments)
        call = self._calls[number]
        named = ""
        if name and not call.name:
            call.name = named = name
        if arguments:
            call.arguments.append(arguments)
        if not (named or arguments):
            return None
        return ToolCallDelta(number, "", named, arguments)

    def _number(self, wire_index: Any, raw_id: str) -> int | None:
        """The call a fragment continues, or None when it begins one."""
        if isinstance(wire_index, int):
            number = self._by_wire_index.get(wire_index)
        else:
            number = len(self._calls) - 1 if self._calls else None
        if number is None:
            return None
        call = self._calls[number]
        if raw_id and call.id_from_upstream and raw_id != call.id:
            return None
        return number

    def calls(self) -> tuple[ToolCall, ...]:
        """Every call so far, whole, in the order they began."""
        return tuple(ToolCall(c.id, c.name, "".join(c.arguments)) for c in self._calls)


def _whole_call(number: int, raw: Any) -> ToolCall:
    function = raw.get("function") or {}
    arguments = function.get("arguments")
    if arguments is None:
        arguments = ""
    elif not isinstance(arguments, str):
        arguments = encode_json(arguments).decode()
    return ToolCall(raw.get("id") or f"call_{number}", function.get("name") or "", arguments)


def _finish(reason: FinishReason, *, refused: bool, called: bool) -> FinishReason:
    """The answer's finish reason: a refusal is REFUSAL, an answer with tool
    calls TOOL_CALLS (whatever the upstream said) unless it was cut short."""
    if refused:
        return FinishReason.REFUSAL
    if called and reason is not FinishReason.LENGTH:
        return FinishReason.TOOL_CALLS
    return reason


def _reasoning_text(holder: Any) -> str:
    for name in _REASONING_FIELDS:
        text = holder.get(name)
        if text and isinstance(text, str):
            return text
    return ""


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error)
    return str(error)
