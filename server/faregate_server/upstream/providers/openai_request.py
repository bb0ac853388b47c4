"""The request body of OpenAI's chat completions, from faregate's domain values.

Every field a `GenerationOptions` or a message's `MessageExtras` holds maps
onto the wire as OpenAI documents it (the openai-python SDK's generated
`completion_create_params.py` and `chat_completion_*_param.py`):
- tools → `{"type": "function", "function": {name, description, parameters}}`
  (faregate's Tool has no `strict`, so none is sent);
- tool choice → "auto" | "none" | "required" | `{"type": "function",
  "function": {"name"}}`; `parallel_tool_calls` only with tools, which OpenAI
  requires;
- an assistant turn's calls → `tool_calls` with `arguments` as the JSON text
  the model wrote, its `content` null when it has no text (the API's "required
  unless tool_calls is specified"); a tool turn → role "tool" with its
  `tool_call_id`;
- parts → text and `image_url` parts, inline images as base64 data URLs;
- response format → `json_object`, or `json_schema` with name, schema, strict;
- stop, top_p, seed as they are; reasoning effort → `reasoning_effort`;
- an assistant turn's reasoning blocks → their text as `reasoning_content`,
  the field DeepSeek requires back on tool loops in thinking mode.

The output cap goes under the model's `output_cap_field`: OpenAI's current
and reasoning models refuse `max_tokens`, some compatible servers ignore
`max_completion_tokens` (Ollama generates unbounded), so it is chosen per
model, never guessed.

Invariant: a plain text request's body is exactly what it was before any of
these existed (role and content per message), built with no extra work.
"""

from __future__ import annotations

import base64
from typing import Any

from faregate_server.content import (
    ContentPart,
    GenerationOptions,
    MessageExtras,
    ResponseFormat,
    ToolChoice,
    ToolChoiceMode,
)
from faregate_server.domain import ChatMessage, Role, UpstreamRequest
from faregate_server.upstream.providers.base import UpstreamError, UpstreamErrorKind

_TOOL_CHOICE_MODES = {
    ToolChoiceMode.AUTO: "auto",
    ToolChoiceMode.NONE: "none",
    ToolChoiceMode.REQUIRED: "required",
}


def request_body(request: UpstreamRequest, cap_field: str, *, stream: bool) -> dict[str, Any]:
    """The JSON body for `request`, its output cap under `cap_field`."""
    body: dict[str, Any] = {
        "model": request.upstream_model,
        "messages": [
            {"role": m.role.value, "content": m.content}
            if m.extras is None
            else _message(m, m.extras)
            for m in request.messages
        ],
        cap_field: request.max_output_tokens,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.options is not None:
        _add_options(body, request.options)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _message(message: ChatMessage, extras: MessageExtras) -> dict[str, Any]:
    content: Any = [_part(part) for part in extras.parts] if extras.parts else message.content
    if extras.tool_call_id:
        return {"role": Role.TOOL.value, "tool_call_id": extras.tool_call_id, "content": content}
    wire: dict[str, Any] = {"role": message.role.value, "content": content}
    if extras.tool_calls:
        if not content:
            wire["content"] = None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in extras.tool_calls
        ]
    if extras.reasoning:
        # DeepSeek refuses a tool loop whose assistant turns come back without
        # the reasoning they came with; it, llama.cpp and older vLLM read it
        # here. A block's signature is its own provider's, checked by no
        # OpenAI-compatible server, so only the text goes.
        wire["reasoning_content"] = "".join(block.text for block in extras.reasoning)
    return wire


def _part(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    url = part.url
    if not url:
        url = f"data:{part.media_type};base64,{base64.b64encode(part.data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def _add_options(body: dict[str, Any], options: GenerationOptions) -> None:
    if options.tools:
        body["tools"] = [
            {"type": "function", "function": _function(t.name, t.description, t.parameters)}
            for t in options.tools
        ]
        if options.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = options.parallel_tool_calls
    if options.tool_choice is not None:
        body["tool_choice"] = _tool_choice(options.tool_choice)
    if options.response_format is not None:
        body["response_format"] = _response_format(options.response_format)
    if options.stop:
        body["stop"] = list(options.stop)
    if options.top_p is not None:
        body["top_p"] = options.top_p
    if options.seed is not None:
        body["seed"] = options.seed
    if options.reasoning is not None:
        if options.reasoning.effort is None:
            # OpenAI-compatible servers take an effort, not a token budget:
            # sending none would drop what the caller asked for.
            raise UpstreamError(
                UpstreamErrorKind.REJECTED,
                "reasoning.budget_tokens alone: OpenAI-compatible models take reasoning.effort",
            )
        body["reasoning_effort"] = options.reasoning.effort.value


def _function(name: str, description: str, parameters: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = description
    # A plain dict: the parsed schema may sit in a read-only mapping, which
    # the JSON encoders refuse.
    function["parameters"] = dict(parameters)
    return function


def _tool_choice(choice: ToolChoice) -> Any:
    if choice.mode is ToolChoiceMode.TOOL:
        return {"type": "function", "function": {"name": choice.tool_name}}
    return _TOOL_CHOICE_MODES[choice.mode]


def _response_format(response_format: ResponseFormat) -> dict[str, Any]:
    if response_format.schema is None:
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": response_format.name,
            "schema": dict(response_format.schema),
            "strict": response_format.strict,
        },
    }
