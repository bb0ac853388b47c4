"""The domain values faregate works with, free of any wire format.

The servicer translates protobuf messages into these and back; everything
between (planning, budgets, pools, providers) speaks only these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """Who wrote a chat message; the values are the providers' wire names."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(StrEnum):
    """Why generation stopped."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class RouteCall:
    """One agent request, validated.

    Attributes:
        model: A model name or route alias; empty means the default route.
        messages: The conversation, oldest first; never empty.
        agent: The calling agent's name, possibly empty.
        budget_key: The budget to spend from.
        max_output_tokens: The caller's output cap, or None for the model's.
        temperature: Sampling temperature, or None for the provider's default.
        metadata: Caller labels kept for logs.
    """

    model: str
    messages: tuple[ChatMessage, ...]
    agent: str
    budget_key: str
    max_output_tokens: int | None
    temperature: float | None
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What a provider adapter sends upstream, already resolved to one model."""

    upstream_model: str
    messages: tuple[ChatMessage, ...]
    max_output_tokens: int
    temperature: float | None


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole answer from a provider; usage is None when it reported none."""

    text: str
    finish_reason: FinishReason
    usage: Usage | None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a provider stream; usage is None when it reported none.

    Text chunks before it are plain `str`s, which keeps the per-token path lean.
    """

    finish_reason: FinishReason
    usage: Usage | None


@dataclass(frozen=True, slots=True)
class RouteResult:
    """A served request with its accounting."""

    output: str
    finish_reason: FinishReason
    usage: Usage
    cost_nano_usd: int
    reserved_nano_usd: int
    budget_remaining_nano_usd: int
    model_used: str
    provider: str
    request_id: str


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """First event of a streamed request: who serves it and what was reserved."""

    model_used: str
    provider: str
    request_id: str
    reserved_nano_usd: int


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """Last event of a successful streamed request."""

    usage: Usage
    cost_nano_usd: int
    budget_remaining_nano_usd: int
    finish_reason: FinishReason
