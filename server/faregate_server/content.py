"""What a conversation carries beyond plain text, free of any wire format.

Content parts (text and images), the tools a request offers and the calls a
model makes of them, how the model may use them (`ToolChoice`), the JSON an
answer must be (`ResponseFormat`), sampling controls, and reasoning: asked for
(`Reasoning`) and returned as blocks to pass back (`ReasoningBlock`), and
whether the prompt is to be cached (`cache_prompt`, for `CacheTtl`). The
fragments a stream yields of an answer beyond its text are here too:
`ToolCallDelta`, `ReasoningDelta`, `RefusalDelta`.

`Feature` names each of these a request can use. A provider adapter declares
the features it carries upstream, and a request using another is never sent
to it (routing/selection.py judges the candidate unfit, naming the field), so
nothing a caller asks for is dropped on the way without a word. Prompt
caching is no feature: it changes what a request is billed, never what it
asks of the model, and every adapter honours it as far as its provider can
(Anthropic's marks the prompt, OpenAI caches on its own, sim has no bill),
so no candidate is ever passed over for it.

Invariants: every value is immutable, JSON the caller sent (a tool's
parameters, a response schema) excepted, which is held parsed, as the JSON
object it was validated to be, and never changed after; what a model wrote
(a call's arguments) is held as the text it wrote, valid JSON or not. A plain
text request holds none of these: its messages carry no `MessageExtras` and
its call no `GenerationOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

JsonObject = Mapping[str, Any]
"""A JSON object, parsed: the str keys and JSON values `json.loads` gives."""

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
"""The image formats every provider faregate speaks to accepts."""

NO_PARAMETERS: JsonObject = MappingProxyType({"type": "object", "properties": {}})
"""The parameters of a tool that takes no arguments, as JSON Schema."""

DEFAULT_SCHEMA_NAME = "response"
"""The name a response schema goes by when the caller gives it none."""


class Feature(StrEnum):
    """A request feature beyond plain chat, which a provider adapter must
    carry upstream before a request that uses it may be sent to it. A
    refusal names the first one missing in this order (images before the
    parts that hold them)."""

    TOOLS = "tools"
    TOOL_CHOICE = "tool_choice"
    PARALLEL_TOOL_CALLS = "parallel_tool_calls"
    TOOL_CALLS = "tool_calls"
    """Assistant turns that carry the tool calls they made."""
    TOOL_RESULTS = "tool_results"
    """Tool turns: the results of earlier calls."""
    IMAGES = "images"
    CONTENT_PARTS = "content_parts"
    """Messages whose content is a list of parts rather than one text."""
    RESPONSE_FORMAT = "response_format"
    STOP = "stop"
    TOP_P = "top_p"
    SEED = "seed"
    REASONING = "reasoning"
    """A request for reasoning (effort or budget)."""
    REASONING_BLOCKS = "reasoning_blocks"
    """Assistant turns that carry the reasoning they came with."""


@dataclass(frozen=True, slots=True)
class Image:
    """A picture shown to the model: fetched by the provider from `url`, or
    sent inline as `data`. Exactly one of the two is set."""

    url: str = ""
    """An http or https URL."""
    data: bytes = b""
    """The image file's bytes."""
    media_type: str = ""
    """One of IMAGE_MEDIA_TYPES; always set with `data`, possibly empty with a URL."""


ContentPart = str | Image
"""One part of a message's content, in order: text, or an image."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call a model made of a tool."""

    id: str
    """The provider's id for the call, which the tool turn answering it names."""
    name: str
    arguments_json: str
    """The arguments as the model wrote them: normally a JSON object, not guaranteed."""


@dataclass(frozen=True, slots=True)
class ReasoningBlock:
    """One block of a model's reasoning, passed back exactly as received."""

    text: str = ""
    """The reasoning as text (possibly the provider's summary); empty when redacted."""
    signature: str = ""
    """The provider's signature over the block, which it checks when passed back."""
    redacted: bytes = b""
    """A block the provider withheld in encrypted form, opaque; empty when readable."""


@dataclass(frozen=True, slots=True)
class MessageExtras:
    """What a message holds beyond one plain text, when it holds anything.

    At most one of `parts` and the message's own content is non-empty.
    """

    parts: tuple[ContentPart, ...] = ()
    """The content as parts, in order (images in user turns only)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant turn's calls."""
    tool_call_id: str = ""
    """A tool turn: the id of the call of an earlier assistant turn it answers."""
    reasoning: tuple[ReasoningBlock, ...] = ()
    """An assistant turn's reasoning, as received."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; the caller runs it."""

    name: str
    """Unique among the request's tools; matches `^[a-zA-Z0-9_-]{1,64}$`."""
    description: str
    parameters: JsonObject
    """The JSON Schema of the arguments (NO_PARAMETERS when it takes none)."""


class ToolChoiceMode(StrEnum):
    """Whether the model must, may or must not call tools."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    """At least one of the tools."""
    TOOL = "tool"
    """The one tool `ToolChoice.tool_name` names."""


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode
    tool_name: str = ""
    """For mode TOOL: the tool to call, one of the request's."""


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The JSON an answer must be: any JSON object, or one matching `schema`."""

    schema: JsonObject | None = None
    """The JSON Schema the answer matches; None for any JSON object."""
    name: str = DEFAULT_SCHEMA_NAME
    strict: bool = False
    """Whether the provider must enforce the schema exactly."""


class ReasoningEffort(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Reasoning:
    """How much a model should reason before it answers; at least one is set."""

    effort: ReasoningEffort | None = None
    budget_tokens: int | None = None
    """The most output tokens it may spend reasoning."""


class CacheTtl(StrEnum):
    """How long a provider keeps a cached prompt prefix (Anthropic's `ttl`)."""

    FIVE_MINUTES = "5m"
    """Anthropic's default; each read renews it."""
    ONE_HOUR = "1h"
    """Dearer to write (Anthropic: 2 times the input price, against 1.25)."""


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """What a call asks of generation beyond its messages, output cap and
    temperature, each None or empty when unset (the provider's default)."""

    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    seed: int | None = None
    reasoning: Reasoning | None = None
    cache_prompt: bool | None = None
    """Whether the provider should cache the prompt; None: the route decides
    (routing/selection.py `cache_ttl`)."""


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of one tool call in a stream: the first of a call names it
    (`id`, `name`), every one may add to its arguments."""

    index: int
    """Which call of the answer, from 0, in the order they began."""
    id: str = ""
    name: str = ""
    arguments_json: str = ""
    """More of the arguments' JSON text, to append."""


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """More reasoning text in a stream, to append."""

    text: str


@dataclass(frozen=True, slots=True)
class RefusalDelta:
    """More of a refusal's text in a stream, to append."""

    text: str


AnswerDelta = ToolCallDelta | ReasoningDelta | RefusalDelta
"""A stream's fragments beyond text (which streams as plain `str`)."""
