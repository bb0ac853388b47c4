"""The messages' fields beyond role and text, in: validated extras out.

rpc/translate.py reads each message's role and content and hands each
message that holds more (parts, images, tool calls, the call a tool turn
answers, reasoning blocks) to one `Conversation`, oldest first, which adds
every violation it finds to the caller's `violations`, under the field's
path, and never stops at the first.

The rules: a message holds `content` or `parts`, never both, and no part is
empty; images appear in user turns only, at most `server.max_images` per
request, each inline one at most `server.max_image_bytes`; tool calls and
reasoning blocks sit on assistant turns only; a tool turn names the call it
answers, which an earlier assistant turn made and no other tool turn
answered; a call's name follows rules.NAME. A message holds at most the
parts, calls and blocks below: past them it is refused unread, so a small
request can cause no more than a bounded amount of work per message.
"""

from __future__ import annotations

from faregate.v1 import router_pb2

from faregate_server.config.schema import ServerConfig
from faregate_server.content import (
    IMAGE_MEDIA_TYPES,
    ContentPart,
    Image,
    MessageExtras,
    ReasoningBlock,
    ToolCall,
)
from faregate_server.domain import Role
from faregate_server.rpc.rules import NAME, NAME_RULE, add, exceeds, too_many
from faregate_server.rpc.translate_options import MAX_TOOLS

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
            add(violations, f"{path}.parts", too_many(len(message.parts), "parts", MAX_PARTS))
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
                too_many(len(message.tool_calls), "calls", MAX_TOOL_CALLS),
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
            if not NAME.fullmatch(call.name):
                violations[f"{call_path}.name"] = NAME_RULE
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
                too_many(len(message.reasoning), "blocks", MAX_REASONING_BLOCKS),
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
