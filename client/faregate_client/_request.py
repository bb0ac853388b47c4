"""RouteRequest and StreamRouteRequest built from the client's keywords.

The keywords of `RouteOptions` are the request messages' own fields, passed
through under their proto names, so both clients and both RPCs build a request
the same way and a field the contract adds is one line of `RouteOptions` (its
name and type; a message or a repeated message goes in as the generated class
itself). Only the enums are spelled differently: by the lowercase end of their
value's name (`prefer="cost"` is PREFERENCE_COST), which `enum_names` reads
from the generated descriptors. None stands for a keyword not passed.

A keyword `RouteOptions` does not declare raises TypeError, as a misspelt
keyword argument does, before anything is sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict, TypeVar

from faregate.v1 import router_pb2
from google.protobuf.descriptor import EnumDescriptor

Messages = str | Sequence[tuple[str, str] | router_pb2.Message]
"""A lone user message, or the conversation oldest first: (role, content) pairs
with role "system", "user" or "assistant", or `router_pb2.Message`s as they are."""

Preference = Literal["cost", "latency", "quality"]
Task = Literal[
    "boilerplate", "generation", "refactor", "review", "unit_test", "planning",
    "orchestration", "security_review", "debug", "explain",
]  # fmt: skip
Capability = Literal["tools", "vision", "json_mode"]
Fallback = Literal["same_route", "none"]


class RouteOptions(TypedDict, total=False):
    """The optional fields of a request; protos/faregate/v1/router.proto documents each."""

    model: str
    """A model or a route alias; omitted means the config's default route."""
    agent: str
    """The calling agent's name, for accounting and logs."""
    max_output_tokens: int | None
    """The most tokens the answer may have; omitted means the model's cap."""
    temperature: float | None
    """Sampling temperature; omitted means the provider's default."""
    metadata: Mapping[str, str] | None
    """Free-form labels kept with the request for logs and accounting."""
    prefer: Preference | None
    """What to favour among feasible candidates; omitted means balanced."""
    task: Task | None
    """The kind of work; omitted means faregate classifies the messages."""
    explain: bool
    """Report every candidate's score (`candidates` in the response or the stream's start)."""
    min_quality: float | None
    """The lowest model quality (0 to 1) acceptable."""
    max_cost_nano_usd: int | None
    """The most the request may cost in the worst case, in nano-USD."""
    min_context_tokens: int | None
    """The smallest context window acceptable, in tokens."""
    required_capabilities: Sequence[Capability]
    """Capabilities the model must have."""
    fallback: Fallback | None
    """Which models may serve when the first choice fails; omitted means same_route."""
    additional_budget_keys: Sequence[str]
    """Further budgets the request also draws on, each charged the whole cost."""
    request_id: str | None
    """The id that makes a retry safe: pass the same one on every retry of a request.
    Omitted: a fresh UUID4 per call (unless the client was made with
    generate_request_ids=False, then none); "" sends none."""
    tools: Sequence[router_pb2.Tool]
    """Tools the model may call (name, description, JSON Schema of the arguments)."""
    tool_choice: router_pb2.ToolChoice | None
    """Whether and which tool the model must call; omitted means the provider's default."""
    parallel_tool_calls: bool | None
    """Whether the model may call several tools in one turn."""
    response_format: router_pb2.ResponseFormat | None
    """A JSON object, or JSON matching a schema, instead of free text."""
    stop: Sequence[str]
    """Sequences that end the answer where they appear."""
    top_p: float | None
    """Nucleus sampling: the share of probability mass sampled from (0 to 1)."""
    seed: int | None
    """Ask for reproducible sampling, where the provider offers it."""
    reasoning: router_pb2.Reasoning | None
    """How much a reasoning model may think (effort, or a budget of tokens)."""
    cache_prompt: bool | None
    """Have the provider cache the prompt; omitted means the route's setting."""


_OPTIONS = frozenset(RouteOptions.__optional_keys__)
_ENUMS: dict[str, EnumDescriptor] = {
    "prefer": router_pb2.Preference.DESCRIPTOR,
    "task": router_pb2.Task.DESCRIPTOR,
    "fallback": router_pb2.FallbackPolicy.DESCRIPTOR,
}
_CAPABILITY = router_pb2.Capability.DESCRIPTOR
_ROLE = router_pb2.Role.DESCRIPTOR


def enum_names(enum: EnumDescriptor) -> tuple[str, ...]:
    """The names keywords take for an enum's values (all bar UNSPECIFIED), in order."""
    prefix = _prefix(enum)
    return tuple(value.name.removeprefix(prefix).lower() for value in enum.values if value.number)


def enum_name(enum: EnumDescriptor, number: int) -> str:
    """A value's name as keywords spell it: "stop" for FINISH_REASON_STOP."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)  # a value newer than these stubs
    return value.name.removeprefix(_prefix(enum)).lower()


def _prefix(enum: EnumDescriptor) -> str:
    # Every value's name starts as the zero value's does: the enum's name in
    # UPPER_SNAKE (buf STANDARD's ENUM_VALUE_PREFIX), e.g. PREFERENCE_.
    return enum.values_by_number[0].name.removesuffix("UNSPECIFIED")


def _enum_value(enum: EnumDescriptor, field: str, name: str) -> int:
    value = enum.values_by_name.get(_prefix(enum) + str(name).upper())
    if value is None or value.number == 0:
        raise ValueError(f"{field} must be one of {', '.join(enum_names(enum))}, not {name!r}")
    return value.number


def to_messages(messages: Messages) -> list[router_pb2.Message]:
    """The conversation as the contract's messages; an unknown role is sent as
    ROLE_UNSPECIFIED, which faregate refuses naming the message."""
    if isinstance(messages, str):
        return [router_pb2.Message(role=router_pb2.ROLE_USER, content=messages)]
    built: list[router_pb2.Message] = []
    for message in messages:
        if isinstance(message, router_pb2.Message):
            built.append(message)
            continue
        role, content = message
        built.append(router_pb2.Message(role=_role(role), content=content))
    return built


def _role(name: str) -> router_pb2.Role.ValueType:
    try:
        return router_pb2.Role.Value(_prefix(_ROLE) + name.upper())
    except ValueError:
        return router_pb2.ROLE_UNSPECIFIED


Request = TypeVar("Request", router_pb2.RouteRequest, router_pb2.StreamRouteRequest)


def build_request(
    kind: Callable[..., Request],
    messages: Messages,
    budget_key: str,
    options: RouteOptions,
    *,
    generate_request_id: bool,
) -> Request:
    """`kind` (RouteRequest or StreamRouteRequest) carrying `options`.

    Raises:
        TypeError: a keyword that is no option.
        ValueError: an enum keyword naming no value of its enum.
    """
    unknown = options.keys() - _OPTIONS
    if unknown:
        raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
    fields: dict[str, Any] = {name: value for name, value in options.items() if value is not None}
    for name, enum in _ENUMS.items():
        if name in fields:
            fields[name] = _enum_value(enum, name, fields[name])
    if "required_capabilities" in fields:
        fields["required_capabilities"] = [
            _enum_value(_CAPABILITY, "required_capabilities", name)
            for name in fields["required_capabilities"]
        ]
    if "request_id" not in fields and generate_request_id:
        fields["request_id"] = str(uuid.uuid4())
    return kind(messages=to_messages(messages), budget_key=budget_key, **fields)
