"""Anthropic's Messages API.

POST {api_base}/v1/messages with `x-api-key` and `anthropic-version`. The
request body is built in anthropic_messages.py (how each field maps, and
what is refused before any call); answers are read in anthropic_answer.py
(content blocks, stop reasons, the stream's blocks). The SSE stream is a
sequence of named events: `message_start` (input and cache usage),
`content_block_start`/`_delta`/`_stop` (text, tool calls, thinking),
`message_delta` (stop reason and cumulative usage: output, and maybe the
input and cache counts, each replacing message_start's), `message_stop`,
`ping` keep-alives and `error` (for example `overloaded_error`) at any point;
other event types are ignored, as Anthropic asks.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import aiohttp

from faregate_server.config.schema import ModelConfig
from faregate_server.content import AnswerDelta, Feature, GenerationOptions
from faregate_server.domain import Completion, StreamEnd, UpstreamRequest
from faregate_server.upstream.providers.anthropic_answer import StreamAssembly, completion
from faregate_server.upstream.providers.anthropic_messages import request_body, request_refusal
from faregate_server.upstream.providers.base import (
    JsonEndpoint,
    UpstreamError,
    UpstreamErrorKind,
    error_excerpt,
    translate_transport_errors,
)
from faregate_server.upstream.providers.json_codec import decode_json
from faregate_server.upstream.providers.refusals import Refusal
from faregate_server.upstream.redaction import Redactor
from faregate_server.upstream.usage import anthropic_usage

ANTHROPIC_VERSION = "2023-06-01"

# Events that only keep the connection busy: they do not reset the idle timeout.
_KEEPALIVE_EVENTS = frozenset({"ping"})
# Error types Anthropic sends in-stream that mean "try again later".
_RETRYABLE_ERRORS = {"overloaded_error", "api_error", "rate_limit_error"}


class AnthropicProvider:
    """One model behind Anthropic's Messages API."""

    carried_features: ClassVar[frozenset[Feature]] = frozenset(Feature) - {Feature.SEED}
    """Everything but a seed, which the Messages API has no field for
    (anthropic_messages.py has the mapping)."""

    def refusal(
        self, temperature: float | None, options: GenerationOptions | None, max_output_tokens: int
    ) -> Refusal | None:
        """A temperature over 1, and what thinking cannot be combined with
        (anthropic_messages.py lists it)."""
        return request_refusal(temperature, options, max_output_tokens)

    def __init__(
        self, session: aiohttp.ClientSession, model: ModelConfig, redactor: Redactor
    ) -> None:
        headers = {"anthropic-version": ANTHROPIC_VERSION, "x-api-key": model.api_key or ""}
        self._endpoint = JsonEndpoint(
            session, f"{model.api_base}/v1/messages", headers, model, redactor
        )
        self._redactor = redactor

    async def complete(self, request: UpstreamRequest) -> Completion:
        body = _checked_body(request, stream=False)
        with translate_transport_errors():
            answer = await self._endpoint.post(body)
            return completion(answer)

    def stream(
        self, request: UpstreamRequest
    ) -> AsyncGenerator[str | AnswerDelta | StreamEnd, None]:
        """Text chunks and a ToolCallDelta, ReasoningDelta or RefusalDelta for
        each fragment beyond text as it arrives (see anthropic_answer.py),
        then the StreamEnd with the assembled tool calls and reasoning blocks."""
        return self._stream(request)

    async def _stream(
        self, request: UpstreamRequest
    ) -> AsyncGenerator[str | AnswerDelta | StreamEnd, None]:
        # The usage as reported (any JSON values): message_start's, with what
        # message_delta reports put over it (its counts are running totals,
        # never to be added); usage.py reads and judges it at the end.
        usage: dict[str, Any] = {}
        if request.reported is not None:
            request.reported.raw, request.reported.read = usage, anthropic_usage
        # message_start's output count is a placeholder (1): a stream whose
        # message_delta never gave the real one reports no usage at its end,
        # so it is charged as counted, its reported input included.
        output_reported = False
        answer = StreamAssembly()
        stopped = False
        body = _checked_body(request, stream=True)
        with translate_transport_errors():
            async with self._endpoint.open_stream(body, _KEEPALIVE_EVENTS) as events:
                async for event in events:
                    kind = event.event
                    if kind == "content_block_delta":
                        payload = decode_json(event.data)
                        delta = payload["delta"]
                        if delta.get("type") == "text_delta":
                            if delta.get("text"):
                                yield delta["text"]
                        else:
                            fragment = answer.on_delta(payload.get("index"), delta)
                            if fragment is not None:
                                yield fragment
                    elif kind == "content_block_start":
                        payload = decode_json(event.data)
                        block = payload.get("content_block") or {}
                        opening = answer.on_start(payload.get("index"), block)
                        for item in opening:
                            yield item
                    elif kind == "content_block_stop":
                        answer.on_stop(decode_json(event.data).get("index"))
                    elif kind == "message_start":
                        started = decode_json(event.data)["message"].get("usage")
                        if isinstance(started, dict):
                            usage.update(started)
                    elif kind == "message_delta":
                        payload = decode_json(event.data)
                        refusal = answer.on_message_delta(payload.get("delta") or {})
                        if refusal is not None:
                            yield refusal
                        delta_usage = payload.get("usage")
                        if isinstance(delta_usage, dict):
                            output_reported = output_reported or (
                                delta_usage.get("output_tokens") is not None
                            )
                            # A null count there is one not sent (its type is
                            # optional), as the SDK's accumulator reads it.
                            usage.update(
                                (name, count)
                                for name, count in delta_usage.items()
                                if count is not None
                            )
                    elif kind == "message_stop":
                        stopped = True
                        break
                    elif kind == "error":
                        error = decode_json(event.data).get("error") or {}
                        raise _stream_error(error, self._redactor)
        if not stopped:
            raise UpstreamError(
                UpstreamErrorKind.UNAVAILABLE, "upstream stream ended before message_stop"
            )
        yield StreamEnd(
            answer.finish_reason,
            anthropic_usage(usage) if output_reported else None,
            answer.tool_calls(),
            answer.reasoning(),
        )


def _checked_body(request: UpstreamRequest, *, stream: bool) -> dict[str, Any]:
    """The request's body, or a REJECTED error before any call when Anthropic
    would refuse what it asks. Routing never picks a model whose provider
    refuses the request (`AnthropicProvider.refusal`); this keeps the
    adapter from sending such a body whoever calls it."""
    refused = request_refusal(request.temperature, request.options, request.max_output_tokens)
    if refused is not None:
        field, problem = refused
        raise UpstreamError(UpstreamErrorKind.REJECTED, f"{field}: {problem}")
    return request_body(request, stream=stream)


def _stream_error(error: dict[str, Any], redactor: Redactor) -> UpstreamError:
    error_type = str(error.get("type", "unknown"))
    detail = error_excerpt(f"{error_type}: {error.get('message', '')}", redactor)
    message = f"upstream error mid-stream: {detail}"
    if error_type in _RETRYABLE_ERRORS:
        kind = (
            UpstreamErrorKind.RATE_LIMITED
            if error_type == "rate_limit_error"
            else UpstreamErrorKind.UNAVAILABLE
        )
        return UpstreamError(kind, message)
    if error_type in ("authentication_error", "permission_error"):
        return UpstreamError(UpstreamErrorKind.AUTH_FAILED, message)
    return UpstreamError(UpstreamErrorKind.REJECTED, message)
