"""The request fields beyond plain chat, in: validated domain values out.

rpc/translate.py reads a request's plain fields and hands the rest here:
each message that holds more than one text (parts, images, tool calls, the
call a tool turn answers, reasoning blocks) to `Conversation.extras`, and
the request's tools, tool choice, parallel_tool_calls, response format, stop
sequences, top_p, seed and reasoning to `generation_options`. Like
translate.py, they add every violation they find to the caller's
`violations`, under the field's path, and never stop at the first.

A plain request never reaches this module: translate.py comes here only
when a message or the request sets one of these fields, so the plain path
pays a few field reads for them and no more.

The rules: a message holds `content` or `parts`, never both; images appear
in user turns only, at most `server.max_images` per request, each inline
one at most `server.max_image_bytes`; tool calls and reasoning blocks sit on
assistant turns only; a tool turn names the call it answers, which an
earlier assistant turn made and no other tool turn answered. Tool names
match `^[a-zA-Z0-9_-]{1,64}$` and are unique; a tool's parameters and a
response schema are JSON objects of bounded size; stop sequences, top_p and
the reasoning budget stay within the bounds below.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from faregate.v1 import router_pb2

from faregate_server.config.schema import ServerConfig
from faregate_server.content import (
    DEFAULT_SCHEMA_NAME,
    IMAGE_MEDIA_TYPES,
    NO_PARAMETERS,
    ContentPart,
    GenerationOptions,
    Image,
    JsonObject,
    MessageExtras,
    Reasoning,
    ReasoningBlock,
    ReasoningEffort,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)
from faregate_server.domain import Role

AnyRouteRequest = router_pb2.RouteRequest | router_pb2.StreamRouteRequest

MAX_TOOLS = 128
"""OpenAI's limit, the lower of the two providers': a request with more could
be served by no OpenAI model."""
MAX_JSON_CHARS = 65536
"""A tool's parameters_json, a response schema_json: parsed on the event
loop before any work, so their size is bounded apart from the request's."""
MAX_STOP_SEQUENCES = 16
"""Anthropic takes more than OpenAI's 4; past this a request is unlikely to be
anything but a mistake."""
MAX_STOP_CHARS = 256
MAX_IMAGE_URL_CHARS = 8192
"""Longer than any real image URL; a longer one is a data URL in disguise."""
MAX_TOOL_CALL_ID_CHARS = 256
"""Providers' ids are short (OpenAI's `call_` + 24, Anthropic's `toolu_` + 24)."""
MAX_PARTS = 256
"""Parts of one message. Images are counted apart (server.max_images); text
parts beside them need be no more than a handful, and each part costs a few
bytes on the wire but a check, and maybe a violation, here: past this the
message is refused whole, unread."""
MAX_TOOL_CALLS = MAX_TOOLS
"""Calls of one assistant turn: as many as a request may define tools, each
called once. A model makes a few; an empty call takes 2 bytes on the wire, so
without this bound a small request could hold a hundred thousand of them."""
MAX_REASONING_BLOCKS = 64
"""Reasoning blocks of one assistant turn: a model returns one per step of
thought between its tool calls, a few per turn; bounded for the same reason
as MAX_TOOL_CALLS."""

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_NAME_RULE = "must be 1 to 64 ASCII letters, digits, underscores or hyphens"
_TOOL_CHOICE_MODES = {
    router_pb2.TOOL_CHOICE_MODE_AUTO: ToolChoiceMode.AUTO,
    router_pb2.TOOL_CHOICE_MODE_NONE: ToolChoiceMode.NONE,
    router_pb2.TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode.REQUIRED,
}
_EFFORTS = {
    router_pb2.REASONING_EFFORT_LOW: ReasoningEffort.LOW,
    router_pb2.REASONING_EFFORT_MEDIUM: ReasoningEffort.MEDIUM,
    router_pb2.REASONING_EFFORT_HIGH: ReasoningEffort.HIGH,
}
_MEDIA_TYPES = ", ".join(sorted(IMAGE_MEDIA_TYPES))


class Conversation:
    """Reads the extras of a request's messages, oldest first, remembering
    what the rules across messages need: the calls assistant turns made, the
    ones tool turns answered, and the images counted so far."""

    def __init__(self, settings: ServerConfig) -> None:
        self._settings = settings
        self._calls: dict[str, int] = {}
        """Each call id made so far, and the index of the message that made it."""
        self._answered: dict[str, int] = {}
        """Each call id answered so far, and the index of the tool turn that did."""
        self._images = 0

    def extras(
        self,
        index: int,
        message: router_pb2.Message,
        role: Role | None,
        violations: dict[str, str],
    ) -> MessageExtras:
        """The extras of `message`, the request's `index`th, whose `role` is
        None when it is not a known one."""
        path = f"messages[{index}]"
        parts: tuple[ContentPart, ...] = ()
        if message.parts:
            if message.content:
                violations[f"{path}.parts"] = "must be empty when content is set"
            parts = self._parts(path, message, role, violations)
        tool_calls: tuple[ToolCall, ...] = ()
        if message.tool_calls:
            if role is not Role.ASSISTANT:
                violations[f"{path}.tool_calls"] = "only an assistant message carries tool calls"
            tool_calls = self._tool_calls(index, path, message, violations)
        if role is Role.TOOL:
            self._answer(index, path, message.tool_call_id, violations)
        elif message.tool_call_id:
            violations[f"{path}.tool_call_id"] = "only a tool message answers a call"
        reasoning: tuple[ReasoningBlock, ...] = ()
        if message.reasoning:
            if role is not Role.ASSISTANT:
                violations[f"{path}.reasoning"] = "only an assistant message carries reasoning"
            reasoning = self._reasoning(path, message, violations)
        return MessageExtras(
            parts=parts,
            tool_calls=tool_calls,
            tool_call_id=message.tool_call_id,
            reasoning=reasoning,
        )

    def _parts(
        self,
        path: str,
        message: router_pb2.Message,
        role: Role | None,
        violations: dict[str, str],
    ) -> tuple[ContentPart, ...]:
        settings = self._settings
        if len(message.parts) > MAX_PARTS:
            add(violations, f"{path}.parts", _too_many(len(message.parts), "parts", MAX_PARTS))
            return ()
        parts: list[ContentPart] = []
        for number, part in enumerate(message.parts):
            part_path = f"{path}.parts[{number}]"
            kind = part.WhichOneof("kind")
            if kind == "text":
                if not part.text:
                    violations[f"{part_path}.text"] = "must not be empty"
                elif len(part.text) > settings.max_message_chars:
                    violations[f"{part_path}.text"] = (
                        f"is {len(part.text)} characters;"
                        f" {exceeds('max_message_chars', settings.max_message_chars)}"
                    )
                parts.append(part.text)
            elif kind == "image":
                image_path = f"{part_path}.image"
                self._images += 1
                if role is not Role.USER:
                    violations[image_path] = "only a user message shows images"
                elif self._images > settings.max_images:
                    violations[image_path] = (
                        f"is image {self._images} of the request;"
                        f" {exceeds('max_images', settings.max_images)}"
                    )
                parts.append(self._image(image_path, part.image, violations))
            else:
                violations[part_path] = "must hold text or an image"
        return tuple(parts)

    def _image(self, path: str, image: router_pb2.Image, violations: dict[str, str]) -> Image:
        source = image.WhichOneof("source")
        media_type = image.media_type
        if media_type and media_type not in IMAGE_MEDIA_TYPES:
            violations[f"{path}.media_type"] = f"must be one of {_MEDIA_TYPES}"
        if source == "url":
            url = image.url
            if len(url) > MAX_IMAGE_URL_CHARS:
                violations[f"{path}.url"] = f"must be at most {MAX_IMAGE_URL_CHARS} characters"
            elif url[:5].lower() == "data:":
                violations[f"{path}.url"] = "an inline image goes in data, not in a data: URL"
            elif not url.lower().startswith(("https://", "http://")):
                violations[f"{path}.url"] = "must be an http or https URL"
            return Image(url=url, media_type=media_type)
        if source == "data":
            data = image.data
            limit = self._settings.max_image_bytes
            if not data:
                violations[f"{path}.data"] = "must not be empty"
            elif len(data) > limit:
                violations[f"{path}.data"] = (
                    f"is {len(data)} bytes; {exceeds('max_image_bytes', limit)}"
                )
            if not media_type:
                violations[f"{path}.media_type"] = f"is required with data: one of {_MEDIA_TYPES}"
            return Image(data=data, media_type=media_type)
        add(violations, path, "must hold a url or data")
        return Image()

    def _tool_calls(
        self, index: int, path: str, message: router_pb2.Message, violations: dict[str, str]
    ) -> tuple[ToolCall, ...]:
        if len(message.tool_calls) > MAX_TOOL_CALLS:
            add(
                violations,
                f"{path}.tool_calls",
                _too_many(len(message.tool_calls), "calls", MAX_TOOL_CALLS),
            )
            return ()
        calls: list[ToolCall] = []
        for number, call in enumerate(message.tool_calls):
            call_path = f"{path}.tool_calls[{number}]"
            if not call.id:
                violations[f"{call_path}.id"] = "is required"
            elif len(call.id) > MAX_TOOL_CALL_ID_CHARS:
                violations[f"{call_path}.id"] = (
                    f"must be at most {MAX_TOOL_CALL_ID_CHARS} characters"
                )
            elif call.id in self._calls:
                violations[f"{call_path}.id"] = (
                    f"repeats the id of a call in messages[{self._calls[call.id]}]"
                )
            else:
                self._calls[call.id] = index
            if not _NAME.fullmatch(call.name):
                violations[f"{call_path}.name"] = _NAME_RULE
            calls.append(ToolCall(call.id, call.name, call.arguments_json))
        return tuple(calls)

    def _answer(self, index: int, path: str, tool_call_id: str, violations: dict[str, str]) -> None:
        field = f"{path}.tool_call_id"
        if not tool_call_id:
            violations[field] = "is required on a tool message: the id of the call it answers"
        elif tool_call_id not in self._calls:
            violations[field] = "answers no call of an earlier assistant message"
        elif tool_call_id in self._answered:
            violations[field] = (
                f"answers a call messages[{self._answered[tool_call_id]}] answered already"
            )
        else:
            self._answered[tool_call_id] = index

    def _reasoning(
        self, path: str, message: router_pb2.Message, violations: dict[str, str]
    ) -> tuple[ReasoningBlock, ...]:
        if len(message.reasoning) > MAX_REASONING_BLOCKS:
            add(
                violations,
                f"{path}.reasoning",
                _too_many(len(message.reasoning), "blocks", MAX_REASONING_BLOCKS),
            )
            return ()
        blocks: list[ReasoningBlock] = []
        for number, block in enumerate(message.reasoning):
            if not (block.text or block.redacted):
                violations[f"{path}.reasoning[{number}]"] = "needs text or redacted"
            elif block.text and block.redacted:
                violations[f"{path}.reasoning[{number}]"] = "holds text or redacted, not both"
            blocks.append(ReasoningBlock(block.text, block.signature, block.redacted))
        return tuple(blocks)


def uses_options(request: AnyRouteRequest) -> bool:
    """Whether the request sets any field `generation_options` reads."""
    return bool(
        request.tools
        or request.stop
        or request.HasField("tool_choice")
        or request.HasField("parallel_tool_calls")
        or request.HasField("response_format")
        or request.HasField("top_p")
        or request.HasField("seed")
        or request.HasField("reasoning")
    )


def generation_options(
    request: AnyRouteRequest,
    settings: ServerConfig,
    max_output_tokens: int | None,
    violations: dict[str, str],
) -> GenerationOptions:
    """The request's tools, tool choice, response format, sampling and
    reasoning; `max_output_tokens` is the request's own cap, if it set one."""
    tools = _tools(request, violations)
    names = {tool.name for tool in tools}
    if request.HasField("parallel_tool_calls") and not tools:
        violations["parallel_tool_calls"] = "needs tools"
    top_p = None
    if request.HasField("top_p"):
        top_p = request.top_p
        if not (math.isfinite(top_p) and 0 <= top_p <= 1):
            violations["top_p"] = "must be between 0 and 1"
    return GenerationOptions(
        tools=tools,
        tool_choice=_tool_choice(request, names, violations),
        parallel_tool_calls=(
            request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
        ),
        response_format=_response_format(request, violations),
        stop=_stop(request, violations),
        top_p=top_p,
        seed=request.seed if request.HasField("seed") else None,
        reasoning=_reasoning(request, settings, max_output_tokens, violations),
    )


def add(violations: dict[str, str], field: str, description: str) -> None:
    """Adds a violation under `field`, beside any it already has."""
    held = violations.get(field)
    violations[field] = f"{held}; {description}" if held else description


def _too_many(count: int, noun: str, limit: int) -> str:
    return f"has {count} {noun}; at most {limit} are allowed"


def exceeds(setting: str, limit: int) -> str:
    """Names the server setting a request broke, so the caller knows what to shrink."""
    return f"exceeds server.{setting} ({limit})"


def _tools(request: AnyRouteRequest, violations: dict[str, str]) -> tuple[Tool, ...]:
    if len(request.tools) > MAX_TOOLS:
        violations["tools"] = f"has {len(request.tools)} tools; at most {MAX_TOOLS} are allowed"
        return ()
    tools: list[Tool] = []
    seen: dict[str, int] = {}
    for index, tool in enumerate(request.tools):
        path = f"tools[{index}]"
        if not _NAME.fullmatch(tool.name):
            violations[f"{path}.name"] = _NAME_RULE
        elif tool.name in seen:
            violations[f"{path}.name"] = f"repeats the name of tools[{seen[tool.name]}]"
        else:
            seen[tool.name] = index
        parameters = NO_PARAMETERS
        if tool.parameters_json:
            parameters = _json_object(f"{path}.parameters_json", tool.parameters_json, violations)
        tools.append(Tool(tool.name, tool.description, parameters))
    return tuple(tools)


def _tool_choice(
    request: AnyRouteRequest, names: set[str], violations: dict[str, str]
) -> ToolChoice | None:
    if not request.HasField("tool_choice"):
        return None
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if which == "mode":
        if choice.mode == router_pb2.TOOL_CHOICE_MODE_UNSPECIFIED:
            return None
        mode = _TOOL_CHOICE_MODES.get(choice.mode)
        if mode is None:
            violations["tool_choice.mode"] = "is not a known mode"
            return None
        if mode is ToolChoiceMode.REQUIRED and not names:
            violations["tool_choice.mode"] = "REQUIRED needs tools"
        return ToolChoice(mode)
    if which == "tool_name":
        if choice.tool_name not in names:
            violations["tool_choice.tool_name"] = "must name one of the request's tools"
        return ToolChoice(ToolChoiceMode.TOOL, choice.tool_name)
    return None


def _response_format(request: AnyRouteRequest, violations: dict[str, str]) -> ResponseFormat | None:
    if not request.HasField("response_format"):
        return None
    wanted = request.response_format
    which = wanted.WhichOneof("format")
    if which == "json_object":
        return ResponseFormat() if wanted.json_object else None
    if which != "json_schema":
        return None
    given = wanted.json_schema
    name = given.name or DEFAULT_SCHEMA_NAME
    if not _NAME.fullmatch(name):
        violations["response_format.json_schema.name"] = _NAME_RULE
    schema = None
    if not given.schema_json:
        violations["response_format.json_schema.schema_json"] = "is required"
    else:
        schema = _json_object(
            "response_format.json_schema.schema_json", given.schema_json, violations
        )
    return ResponseFormat(schema=schema, name=name, strict=given.strict)


def _stop(request: AnyRouteRequest, violations: dict[str, str]) -> tuple[str, ...]:
    stop = tuple(request.stop)
    if len(stop) > MAX_STOP_SEQUENCES:
        violations["stop"] = f"has {len(stop)} sequences; at most {MAX_STOP_SEQUENCES} are allowed"
        return stop
    for index, sequence in enumerate(stop):
        if not 1 <= len(sequence) <= MAX_STOP_CHARS:
            violations[f"stop[{index}]"] = f"must be 1 to {MAX_STOP_CHARS} characters"
    return stop


def _reasoning(
    request: AnyRouteRequest,
    settings: ServerConfig,
    max_output_tokens: int | None,
    violations: dict[str, str],
) -> Reasoning | None:
    if not request.HasField("reasoning"):
        return None
    asked = request.reasoning
    effort = _EFFORTS.get(asked.effort)
    if effort is None and asked.effort != router_pb2.REASONING_EFFORT_UNSPECIFIED:
        violations["reasoning.effort"] = "is not a known effort"
    budget = None
    if asked.HasField("budget_tokens"):
        budget = asked.budget_tokens
        limit = settings.max_output_tokens_limit
        if budget < 1:
            violations["reasoning.budget_tokens"] = "must be positive when set"
        elif budget > limit:
            violations["reasoning.budget_tokens"] = (
                f"is {budget}; {exceeds('max_output_tokens_limit', limit)}"
            )
        elif max_output_tokens is not None and budget >= max_output_tokens:
            violations["reasoning.budget_tokens"] = (
                f"must be less than max_output_tokens ({max_output_tokens}):"
                " reasoning is part of the output"
            )
    elif asked.effort == router_pb2.REASONING_EFFORT_UNSPECIFIED:
        violations["reasoning"] = "set effort or budget_tokens"
    return Reasoning(effort, budget)


def _json_object(field: str, text: str, violations: dict[str, str]) -> JsonObject:
    """`text` parsed, when it is a JSON object of at most MAX_JSON_CHARS; else
    an empty one, with a violation under `field`."""
    if len(text) > MAX_JSON_CHARS:
        violations[field] = f"is {len(text)} characters; at most {MAX_JSON_CHARS} are allowed"
        return {}
    try:
        parsed: Any = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        violations[field] = f"is not valid JSON: {error}"
        return {}
    if not isinstance(parsed, dict):
        violations[field] = "must be a JSON object"
        return {}
    return parsed
