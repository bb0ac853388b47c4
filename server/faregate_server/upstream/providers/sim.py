"""A simulated provider, for the embedded default config and demos.

It makes no network call and generates placeholder words at a configured
pace, failing at a configured rate as an upstream 503 would. Its answers say
they are simulated, and its model's provider reads "sim" in every response.

With `sim.tool_call` set it takes part in an agent loop: a request that
offers tools (and does not forbid them with tool choice "none"), whose last
turn is not a tool's result, is answered with that one call, streamed as
ToolCallDelta fragments (the arguments a few characters at a time) and
finishing TOOL_CALLS; once the result comes back, the answer is text again.
Usage counts the call's arguments as output.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import ClassVar

from faregate_server.config.models import SimToolCall
from faregate_server.config.schema import ModelConfig
from faregate_server.content import (
    AnswerDelta,
    Feature,
    GenerationOptions,
    ToolCall,
    ToolCallDelta,
    ToolChoiceMode,
)
from faregate_server.domain import (
    Completion,
    FinishReason,
    Role,
    StreamEnd,
    UpstreamRequest,
    Usage,
)
from faregate_server.upstream.providers.base import UpstreamError, UpstreamErrorKind
from faregate_server.upstream.providers.refusals import Refusal, temperature_refusal
from faregate_server.upstream.tokens import EstimatingCounter, count_messages

_WORDS = ("simulated", "answer", "from", "faregate's", "sim", "provider.")
_ARGUMENT_PIECE_CHARS = 8
_CALL_ID = "call_sim_0"


class SimProvider:
    """Generates one placeholder token per configured delay."""

    carried_features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.TOOLS,
            Feature.TOOL_CHOICE,
            Feature.PARALLEL_TOOL_CALLS,
            Feature.TOOL_CALLS,
            Feature.TOOL_RESULTS,
        }
    )
    """The tool loop: it calls at most one tool, so parallel_tool_calls holds
    whatever it says. Images, response formats, stop sequences, top_p, a seed
    or reasoning are refused (MODEL_CANNOT_SERVE): it would ignore them."""

    def refusal(
        self, temperature: float | None, options: GenerationOptions | None, max_output_tokens: int
    ) -> Refusal | None:
        """As OpenAI's range, so sim stands in for either provider."""
        return temperature_refusal(temperature, 2.0, "sim")

    def __init__(self, model: ModelConfig, rng: random.Random | None = None) -> None:
        self._settings = model.sim
        self._counter = EstimatingCounter()
        self._rng = rng or random.Random()

    async def complete(self, request: UpstreamRequest) -> Completion:
        chunks: list[str] = []
        end: StreamEnd | None = None
        async with aclosing(self.stream(request)) as items:
            async for item in items:
                if isinstance(item, str):
                    chunks.append(item)
                elif isinstance(item, StreamEnd):
                    end = item
        assert end is not None
        assert end.usage is not None
        return Completion("".join(chunks), end.finish_reason, end.usage, end.tool_calls)

    async def stream(
        self, request: UpstreamRequest
    ) -> AsyncGenerator[str | AnswerDelta | StreamEnd, None]:
        settings = self._settings
        if settings.failure_rate and self._rng.random() < settings.failure_rate:
            raise UpstreamError(
                UpstreamErrorKind.UNAVAILABLE, "simulated upstream failure", http_status=503
            )
        slow = settings.slow_rate and self._rng.random() < settings.slow_rate
        await asyncio.sleep(
            settings.slow_first_token_delay_s if slow else settings.first_token_delay_s
        )
        call = _call_to_make(request, settings.tool_call)
        if call is not None:
            async with aclosing(self._stream_call(request, call)) as items:
                async for item in items:
                    yield item
            return
        output_tokens = min(settings.output_tokens, request.max_output_tokens)
        for index in range(output_tokens):
            if index:
                await asyncio.sleep(settings.token_delay_s)
            word = _WORDS[index % len(_WORDS)]
            yield f" {word}" if index else word
        finish = (
            FinishReason.LENGTH if output_tokens < settings.output_tokens else FinishReason.STOP
        )
        usage = Usage(await count_messages(self._counter, request.messages), output_tokens)
        yield StreamEnd(finish, usage)

    async def _stream_call(
        self, request: UpstreamRequest, call: ToolCall
    ) -> AsyncGenerator[AnswerDelta | StreamEnd, None]:
        arguments = call.arguments_json
        yield ToolCallDelta(0, call.id, call.name, "")
        for start in range(0, len(arguments), _ARGUMENT_PIECE_CHARS):
            await asyncio.sleep(self._settings.token_delay_s)
            yield ToolCallDelta(0, arguments_json=arguments[start : start + _ARGUMENT_PIECE_CHARS])
        # Counted as output, within the cap (a real model's call is cut there).
        output_tokens = min(self._counter.count_text(arguments), request.max_output_tokens)
        usage = Usage(await count_messages(self._counter, request.messages), output_tokens)
        yield StreamEnd(FinishReason.TOOL_CALLS, usage, (call,))


def _call_to_make(request: UpstreamRequest, configured: SimToolCall | None) -> ToolCall | None:
    """The call a request is answered with, if any (see the module's rule)."""
    options = request.options
    if configured is None or options is None or not options.tools:
        return None
    if request.messages[-1].role is Role.TOOL:
        return None
    offered = {tool.name for tool in options.tools}
    name = configured.name or options.tools[0].name
    choice = options.tool_choice
    if choice is not None:
        if choice.mode is ToolChoiceMode.NONE:
            return None
        if choice.mode is ToolChoiceMode.TOOL:
            name = choice.tool_name
    if name not in offered:
        return None
    return ToolCall(_CALL_ID, name, configured.arguments_json)
