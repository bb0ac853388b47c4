"""Anthropic's Messages API.

POST {api_base}/v1/messages with `x-api-key` and `anthropic-version`. System
messages become the top-level `system` field. The SSE stream is a sequence of
named events: `message_start` (input usage), `content_block_delta` (text),
`message_delta` (stop reason and cumulative output usage), `message_stop`,
`ping` keep-alives and `error` (for example `overloaded_error`) at any point.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import aiohttp

from faregate_server.config.schema import ModelConfig
from faregate_server.content import Feature
from faregate_server.domain import (
    Completion,
    FinishReason,
    ReportedUsage,
    Role,
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
from faregate_server.upstream.providers.json_codec import decode_json
from faregate_server.upstream.redaction import Redactor
from faregate_server.upstream.usage import MISSING, reported_usage, reported_usage_block

ANTHROPIC_VERSION = "2023-06-01"

_STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.REFUSAL,
    "pause_turn": FinishReason.PAUSE_TURN,
    "model_context_window_exceeded": FinishReason.CONTEXT_WINDOW_EXCEEDED,
}
# Events that only keep the connection busy: they do not reset the idle timeout.
_KEEPALIVE_EVENTS = frozenset({"ping"})
# Error types Anthropic sends in-stream that mean "try again later".
_RETRYABLE_ERRORS = {"overloaded_error", "api_error", "rate_limit_error"}


class AnthropicProvider:
    """One model behind Anthropic's Messages API."""

    carried_features: ClassVar[frozenset[Feature]] = frozenset()
    """None yet: a request with tools, images, a response format, stop
    sequences, top_p, a seed or reasoning is refused (MODEL_CANNOT_SERVE)
    until this adapter sends it."""

    def __init__(
        self, session: aiohttp.ClientSession, model: ModelConfig, redactor: Redactor
    ) -> None:
        headers = {"anthropic-version": ANTHROPIC_VERSION, "x-api-key": model.api_key or ""}
        self._endpoint = JsonEndpoint(
            session, f"{model.api_base}/v1/messages", headers, model, redactor
        )
        self._redactor = redactor

    async def complete(self, request: UpstreamRequest) -> Completion:
        with translate_transport_errors():
            answer = await self._endpoint.post(_body(request, stream=False))
            text = "".join(
                block.get("text", "") for block in answer["content"] if block["type"] == "text"
            )
            return Completion(
                text=text,
                finish_reason=_STOP_REASONS.get(
                    answer.get("stop_reason"), FinishReason.UNSPECIFIED
                ),
                usage=_usage(answer.get("usage")),
            )

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[str | StreamEnd, None]:
        # As reported (any JSON value): usage.py judges them at the end.
        input_tokens: object = MISSING
        output_tokens: object = MISSING
        finish_reason = FinishReason.UNSPECIFIED
        stopped = False
        with translate_transport_errors():
            body = _body(request, stream=True)
            async with self._endpoint.open_stream(body, _KEEPALIVE_EVENTS) as events:
                async for event in events:
                    kind = event.event
                    if kind == "content_block_delta":
                        delta = decode_json(event.data)["delta"]
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            yield delta["text"]
                    elif kind == "message_start":
                        usage = decode_json(event.data)["message"].get("usage") or {}
                        if isinstance(usage, dict):
                            input_tokens = usage.get("input_tokens", input_tokens)
                            output_tokens = usage.get("output_tokens", output_tokens)
                    elif kind == "message_delta":
                        payload = decode_json(event.data)
                        reason = (payload.get("delta") or {}).get("stop_reason")
                        if reason:
                            finish_reason = _STOP_REASONS.get(reason, FinishReason.UNSPECIFIED)
                        usage = payload.get("usage") or {}
                        if isinstance(usage, dict):
                            output_tokens = usage.get("output_tokens", output_tokens)
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
        usage_seen = input_tokens is not MISSING or output_tokens is not MISSING
        yield StreamEnd(
            finish_reason, reported_usage(input_tokens, output_tokens) if usage_seen else None
        )


def _usage(raw: Any) -> ReportedUsage:
    return reported_usage_block(raw, "input_tokens", "output_tokens")


def _body(request: UpstreamRequest, *, stream: bool) -> dict[str, Any]:
    system = "\n\n".join(m.content for m in request.messages if m.role is Role.SYSTEM)
    body: dict[str, Any] = {
        "model": request.upstream_model,
        "max_tokens": request.max_output_tokens,
        "messages": [
            {"role": m.role.value, "content": m.content}
            for m in request.messages
            if m.role is not Role.SYSTEM
        ],
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if stream:
        body["stream"] = True
    return body


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
