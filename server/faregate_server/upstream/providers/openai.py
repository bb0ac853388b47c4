"""OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp, Groq, Together…).

POST {api_base}/chat/completions, whole or as SSE with
`stream_options.include_usage`, whose last chunk carries the usage and whose
end is `data: [DONE]`. An error object inside the stream is an upstream failure.

A refusal ends with finish_reason "stop" like any answer: it is told apart
by a non-null `message.refusal` (whole) or `delta.refusal` (streamed), and
is FinishReason.REFUSAL. A whole answer carries the refusal's text; a
stream's text fragments of it are not relayed yet (the gateway streams text
only), its finish reason is.
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
from faregate_server.upstream.usage import reported_usage_block

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


class OpenAIProvider:
    """One model behind an OpenAI-compatible API."""

    carried_features: ClassVar[frozenset[Feature]] = frozenset()
    """None yet: a request with tools, images, a response format, stop
    sequences, top_p, a seed or reasoning is refused (MODEL_CANNOT_SERVE)
    until this adapter sends it."""

    def __init__(
        self, session: aiohttp.ClientSession, model: ModelConfig, redactor: Redactor
    ) -> None:
        headers = {"Authorization": f"Bearer {model.api_key}"} if model.api_key else {}
        self._endpoint = JsonEndpoint(
            session, f"{model.api_base}/chat/completions", headers, model, redactor
        )
        self._redactor = redactor

    async def complete(self, request: UpstreamRequest) -> Completion:
        with translate_transport_errors():
            answer = await self._endpoint.post(_body(request, stream=False))
            choice = answer["choices"][0]
            message = choice["message"]
            refusal = message.get("refusal")
            finish_reason = (
                FinishReason.REFUSAL
                if refusal is not None
                else _FINISH_REASONS.get(choice.get("finish_reason"), FinishReason.UNSPECIFIED)
            )
            return Completion(
                text=message.get("content") or "",
                finish_reason=finish_reason,
                usage=_usage(answer.get("usage")),
                refusal=refusal if isinstance(refusal, str) else "",
            )

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[str | StreamEnd, None]:
        finish_reason = FinishReason.UNSPECIFIED
        usage: ReportedUsage = None
        finished = False
        refused = False
        with translate_transport_errors():
            async with self._endpoint.open_stream(_body(request, stream=True)) as events:
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
                        if delta.get("refusal") is not None:
                            refused = True
                        if choice.get("finish_reason"):
                            finish_reason = _FINISH_REASONS.get(
                                choice["finish_reason"], FinishReason.UNSPECIFIED
                            )
                    if chunk.get("usage"):
                        usage = _usage(chunk["usage"])
        if not finished:
            raise UpstreamError(
                UpstreamErrorKind.UNAVAILABLE, "upstream stream ended before [DONE]"
            )
        yield StreamEnd(FinishReason.REFUSAL if refused else finish_reason, usage)


def _body(request: UpstreamRequest, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.upstream_model,
        "messages": [{"role": m.role.value, "content": m.content} for m in request.messages],
        "max_tokens": request.max_output_tokens,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _usage(raw: Any) -> ReportedUsage:
    return reported_usage_block(raw, "prompt_tokens", "completion_tokens")


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error)
    return str(error)
