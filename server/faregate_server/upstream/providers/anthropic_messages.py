"""The body of an Anthropic Messages request, built from an UpstreamRequest.

The mapping (docs/anthropic.md says the same for callers):
- System turns join into the top-level `system` text; there is no system role.
- Turns become `content` blocks: text, images (`base64` source with its
  media type, or a `url` source), an assistant turn's reasoning first
  (`thinking` with its signature, `redacted_thinking` with its data, as
  received), then its text, then its calls as `tool_use` blocks (`input` is
  `arguments_json` parsed; `{}` when empty). A tool turn is a user turn
  holding one `tool_result` block (`tool_use_id`, `content`).
- Consecutive turns of the same wire role merge into one message, and in a
  user message every `tool_result` comes first, as the API requires
  ("tool_result blocks must come FIRST in the content array"). A single
  plain text turn keeps its string content, exactly as before tools.
- Empty text blocks are left out (the API refuses them, yet returns them).
- Reasoning blocks with neither a signature nor redacted data are left out:
  Anthropic made none of those (they come from another provider), and it
  refuses a thinking block without its signature.
- tools → `tools: [{name, description, input_schema}]`; tool_choice →
  `{type: auto|any|tool|none}` (REQUIRED is `any`); parallel_tool_calls
  false → `disable_parallel_tool_use: true` on it (auto when no choice was
  given; `none` takes no such field).
- stop → `stop_sequences`; top_p → `top_p`. There is no seed: this adapter
  does not carry one.
- response_format json_schema → `output_config.format: {type: json_schema,
  schema}`, the GA structured-output mechanism (always enforced, so `strict`
  and `name` have nothing to map to). json_object has no Anthropic
  equivalent and is refused (`request_refusal`).
- reasoning: `budget_tokens` → `thinking: {type: enabled, budget_tokens}`
  (the manual mode, which Claude 4.7 and later refuse); `effort` →
  `output_config.effort` (low, medium, high as they are), with
  `thinking: {type: adaptive}` when no budget is given, the current mode.
- prompt caching (`cache_ttl` set): `cache_control: {type: ephemeral}`
  (with `ttl: 1h` for an hour) on at most MAX_CACHE_BREAKPOINTS blocks, in
  the API's prefix order tools → system → messages: the last tool; the
  system text, then sent as one text block (the same text as the string it
  is otherwise, so the model sees the same prompt); the last cacheable block
  of the last message, which writes the whole conversation for the next
  turn to read; and that of the message two before it, where the turn
  before put its last mark, so the next turn reads exactly what this one
  wrote however many blocks a turn adds (the API looks back only about 20
  blocks from a mark for an earlier entry). Thinking blocks never carry a
  mark (the API takes none there). Explicit marks rather than the top-level
  automatic `cache_control`: they say what is cached, and need no lookback.

`request_refusal` names what Anthropic would refuse whatever the model, so routing
passes the model over before any call rather than fail on the wire: a
temperature over 1, a json_object response format and, with thinking on, a
forced tool (tool_choice REQUIRED or a tool name), a temperature other than
1, a top_p outside 0.95 to 1, and a budget under 1024 tokens or not under
the output cap. Nothing is dropped silently.

Invariant: the body is plain JSON (dicts, lists, str, numbers, bools): a
caller's schemas, held as read-only mappings, are copied into dicts.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from faregate_server.content import (
    CacheTtl,
    GenerationOptions,
    Image,
    ReasoningBlock,
    ToolChoice,
    ToolChoiceMode,
)
from faregate_server.domain import ChatMessage, Role, UpstreamRequest
from faregate_server.upstream.providers.json_codec import decode_json
from faregate_server.upstream.providers.refusals import Refusal, temperature_refusal

MAX_TEMPERATURE = 1.0
"""The Messages API takes 0 to 1."""
MIN_THINKING_BUDGET_TOKENS = 1024
"""The smallest `thinking.budget_tokens` Anthropic takes."""
_THINKING_TOP_P = (0.95, 1.0)
"""The top_p range Anthropic allows with thinking on."""
_FORCED_CHOICES = frozenset({ToolChoiceMode.REQUIRED, ToolChoiceMode.TOOL})
MAX_CACHE_BREAKPOINTS = 4
"""The most `cache_control` marks a request may carry."""
_UNCACHEABLE_BLOCKS = frozenset({"thinking", "redacted_thinking"})
"""Blocks that cannot carry a `cache_control` mark."""


def request_body(request: UpstreamRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of a Messages request (check `request_refusal` first)."""
    system = "\n\n".join(_text_of(m) for m in request.messages if m.role is Role.SYSTEM)
    body: dict[str, Any] = {
        "model": request.upstream_model,
        "max_tokens": request.max_output_tokens,
        "messages": wire_messages(request.messages),
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.options is not None:
        _add_options(body, request.options)
    if request.cache_ttl is not None:
        _mark_cache(body, request.cache_ttl)
    if stream:
        body["stream"] = True
    return body


def request_refusal(
    temperature: float | None, options: GenerationOptions | None, max_output_tokens: int
) -> Refusal | None:
    """The first part of a request Anthropic would refuse whatever the model,
    or None when it can be sent."""
    over = temperature_refusal(temperature, MAX_TEMPERATURE, "anthropic")
    if over is not None or options is None:
        return over
    if options.response_format is not None and options.response_format.schema is None:
        return (
            "response_format.json_object",
            "Anthropic has no JSON-object mode: give a json_schema instead",
        )
    reasoning = options.reasoning
    if reasoning is None:
        return None
    budget = reasoning.budget_tokens
    if budget is not None and budget < MIN_THINKING_BUDGET_TOKENS:
        return ("reasoning.budget_tokens", f"must be at least {MIN_THINKING_BUDGET_TOKENS}")
    if budget is not None and budget >= max_output_tokens:
        return (
            "reasoning.budget_tokens",
            f"must be less than the output cap ({max_output_tokens} tokens)",
        )
    choice = options.tool_choice
    if choice is not None and choice.mode in _FORCED_CHOICES:
        return ("tool_choice", "Anthropic models cannot be forced to call a tool while reasoning")
    if temperature is not None and temperature != 1:
        return ("temperature", "must be 1 (or unset) when Anthropic models reason")
    low, high = _THINKING_TOP_P
    if options.top_p is not None and not low <= options.top_p <= high:
        return ("top_p", f"must be between {low} and {high} when Anthropic models reason")
    return None


def wire_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The `messages` array: system turns left out, tool turns as user turns,
    consecutive turns of one wire role merged with their tool results first."""
    wire: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        content: str | list[dict[str, Any]] = (
            message.content if message.extras is None else _blocks(message)
        )
        if wire and wire[-1]["role"] == role:
            merged = _as_blocks(wire[-1]["content"]) + _as_blocks(content)
            if role == "user":
                # A stable partition: results first, each part keeping its order.
                results = [b for b in merged if b["type"] == "tool_result"]
                merged = results + [b for b in merged if b["type"] != "tool_result"]
            wire[-1]["content"] = merged
        else:
            wire.append({"role": role, "content": content})
    return wire


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """The content blocks of a message that holds more than plain text."""
    extras = message.extras
    assert extras is not None
    blocks: list[dict[str, Any]] = []
    if message.role is Role.ASSISTANT:
        blocks.extend(b for b in map(_reasoning_block, extras.reasoning) if b is not None)
    content = _content_blocks(message)
    if message.role is Role.TOOL:
        # A plain string when the result is text alone, as most tools answer.
        only_text = all(block["type"] == "text" for block in content)
        result: str | list[dict[str, Any]] = (
            "".join(block["text"] for block in content) if only_text else content
        )
        blocks.append(
            {"type": "tool_result", "tool_use_id": extras.tool_call_id, "content": result}
        )
        return blocks
    blocks.extend(content)
    for call in extras.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": _input(call.arguments_json),
            }
        )
    return blocks


def _content_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """Text and image blocks of the message's content, empty texts left out."""
    extras = message.extras
    parts = extras.parts if extras is not None and extras.parts else (message.content,)
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, str):
            if part:
                blocks.append({"type": "text", "text": part})
        else:
            blocks.append(_image_block(part))
    return blocks


def _image_block(image: Image) -> dict[str, Any]:
    if image.url:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    return {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": image.media_type,
            "data": base64.b64encode(image.data).decode("ascii"),
        },
    }


def _reasoning_block(block: ReasoningBlock) -> dict[str, Any] | None:
    if block.redacted:
        return {"type": "redacted_thinking", "data": block.redacted.decode(errors="replace")}
    if block.signature:
        return {"type": "thinking", "thinking": block.text, "signature": block.signature}
    return None


def _input(arguments_json: str) -> Any:
    """A call's arguments as the object `tool_use.input` must be: `{}` when
    empty; text that is no JSON object is sent as it stands, for the API to
    judge (the model wrote it, and faregate passes it back unchanged)."""
    if not arguments_json.strip():
        return {}
    try:
        return decode_json(arguments_json)
    except (ValueError, RecursionError):
        return arguments_json


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _text_of(message: ChatMessage) -> str:
    extras = message.extras
    if extras is None or not extras.parts:
        return message.content
    return "".join(part for part in extras.parts if isinstance(part, str))


def _add_options(body: dict[str, Any], options: GenerationOptions) -> None:
    if options.tools:
        body["tools"] = [
            _tool(tool.name, tool.description, tool.parameters) for tool in options.tools
        ]
    choice = _tool_choice(options.tool_choice, options.parallel_tool_calls)
    if choice is not None:
        body["tool_choice"] = choice
    if options.stop:
        body["stop_sequences"] = list(options.stop)
    if options.top_p is not None:
        body["top_p"] = options.top_p
    output_config: dict[str, Any] = {}
    if options.response_format is not None and options.response_format.schema is not None:
        output_config["format"] = {
            "type": "json_schema",
            "schema": plain_json(options.response_format.schema),
        }
    reasoning = options.reasoning
    if reasoning is not None:
        if reasoning.budget_tokens is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": reasoning.budget_tokens}
        else:
            body["thinking"] = {"type": "adaptive"}
        if reasoning.effort is not None:
            output_config["effort"] = reasoning.effort.value
    if output_config:
        body["output_config"] = output_config


def _mark_cache(body: dict[str, Any], ttl: CacheTtl) -> None:
    """Puts the cache marks on `body` (see the module docstring); every block
    marked is one of its own, so the marks are shared with nothing else."""
    mark: dict[str, str] = {"type": "ephemeral"}
    if ttl is CacheTtl.ONE_HOUR:
        mark["ttl"] = ttl.value
    tools = body.get("tools")
    if tools:
        tools[-1]["cache_control"] = dict(mark)
    system = body.get("system")
    if system:
        body["system"] = [{"type": "text", "text": system, "cache_control": dict(mark)}]
    messages = body["messages"]
    for index in (len(messages) - 1, len(messages) - 3):
        if index >= 0:
            _mark_last_cacheable(messages[index], mark)


def _mark_last_cacheable(message: dict[str, Any], mark: dict[str, str]) -> None:
    blocks = _as_blocks(message["content"])
    for block in reversed(blocks):
        # Anthropic refuses a mark on thinking, and on an empty text block.
        if block["type"] not in _UNCACHEABLE_BLOCKS and block.get("text", True):
            block["cache_control"] = dict(mark)
            message["content"] = blocks
            return


def _tool(name: str, description: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": name, "input_schema": plain_json(parameters)}
    if description:
        tool["description"] = description
    return tool


def _tool_choice(choice: ToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    mode = ToolChoiceMode.AUTO if choice is None else choice.mode
    if choice is None and parallel is not False:
        return None
    if mode is ToolChoiceMode.NONE:
        return {"type": "none"}
    wire: dict[str, Any]
    if mode is ToolChoiceMode.TOOL:
        assert choice is not None
        wire = {"type": "tool", "name": choice.tool_name}
    else:
        wire = {"type": "any" if mode is ToolChoiceMode.REQUIRED else "auto"}
    if parallel is False:
        wire["disable_parallel_tool_use"] = True
    return wire


def plain_json(value: Any) -> Any:
    """`value` with every mapping a dict and every sequence a list, as the
    JSON encoder takes them (a caller's schema is held read-only)."""
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    return value
