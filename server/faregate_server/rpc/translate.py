"""RouteRequest and StreamRouteRequest in, a validated `RouteCall` out.

`route_call` is a pure function of the request message, the principal it
is authenticated as and the server's configured limits: it checks every
field, and a request that breaks anything is refused with one
`InvalidRequest` naming every violation at once (each under the field's
path), never only the first. A violation of a configured limit names the
setting (`exceeds server.max_messages (1024)`), so the caller knows what
to shrink and the operator what to raise. The limits no config sets are
the constants below, each with why it is what it is.

A request that sets no routing hint costs a few field reads for them. One
that sets none of the fields beyond plain chat (parts, tools, tool calls and
results, response format, stop, top_p, seed, reasoning) costs none: its
serialized size, which is measured anyway, equals the sum of what its plain
fields take (rpc/wire_size.py), and only a request larger than that has
those fields read and checked (rpc/translate_messages.py for the
messages', rpc/translate_options.py for the request's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from faregate.v1 import router_pb2
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from faregate_server.config.schema import ServerConfig
from faregate_server.content import Feature, GenerationOptions
from faregate_server.domain import (
    Capability,
    ChatMessage,
    Preference,
    Role,
    RouteCall,
    RoutingHints,
    TaskKind,
    call_features,
)
from faregate_server.errors import MAX_SHOWN_VIOLATIONS, InvalidRequest
from faregate_server.rpc.rules import AnyRouteRequest as AnyRouteRequest
from faregate_server.rpc.rules import add, check_tokens, exceeds
from faregate_server.rpc.translate_messages import Conversation
from faregate_server.rpc.translate_options import generation_options, uses_options
from faregate_server.rpc.wire_size import hint_bytes, message_bytes, request_bytes
from faregate_server.state.replay import fingerprint

# The hard limits, beside the configured ones (server.max_* in the config).
MAX_TEMPERATURE = 2.0
"""The widest sampling temperature any provider accepts (OpenAI's range is 0 to 2)."""
MAX_ADDITIONAL_BUDGETS = 8
"""Every budget a request names is reserved and committed with the others, all
or nothing: this bounds the state work one request can cause."""
MAX_REQUEST_ID_CHARS = 128
"""A request id is kept in the replay table; a UUID (AIP-155) needs 36, this
leaves room for a client's own scheme."""
MAX_NAME_CHARS = 256
"""Model, route, agent and budget names are configured and short: a huge one
is refused before it reaches an error message, a log line or the ledger."""
SHOWN_KEY_CHARS = 32
"""How much of an over-long metadata key its violation names: the key itself
may be the thing that is too long."""

_ROLES = {
    router_pb2.ROLE_SYSTEM: Role.SYSTEM,
    router_pb2.ROLE_USER: Role.USER,
    router_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    router_pb2.ROLE_TOOL: Role.TOOL,
}
_PREFERENCES = {
    router_pb2.PREFERENCE_UNSPECIFIED: Preference.BALANCED,
    router_pb2.PREFERENCE_COST: Preference.COST,
    router_pb2.PREFERENCE_LATENCY: Preference.LATENCY,
    router_pb2.PREFERENCE_QUALITY: Preference.QUALITY,
}
_CAPABILITIES = {
    router_pb2.CAPABILITY_TOOLS: Capability.TOOLS,
    router_pb2.CAPABILITY_VISION: Capability.VISION,
    router_pb2.CAPABILITY_JSON_MODE: Capability.JSON_MODE,
}
TASKS = {
    router_pb2.TASK_BOILERPLATE: TaskKind.BOILERPLATE,
    router_pb2.TASK_GENERATION: TaskKind.GENERATION,
    router_pb2.TASK_REFACTOR: TaskKind.REFACTOR,
    router_pb2.TASK_REVIEW: TaskKind.REVIEW,
    router_pb2.TASK_UNIT_TEST: TaskKind.UNIT_TEST,
    router_pb2.TASK_PLANNING: TaskKind.PLANNING,
    router_pb2.TASK_ORCHESTRATION: TaskKind.ORCHESTRATION,
    router_pb2.TASK_SECURITY_REVIEW: TaskKind.SECURITY_REVIEW,
    router_pb2.TASK_DEBUG: TaskKind.DEBUG,
    router_pb2.TASK_EXPLAIN: TaskKind.EXPLAIN,
}
"""The wire's task numbers and the domain's kinds (TASK_UNSPECIFIED aside)."""
_FALLBACK_POLICIES = frozenset(router_pb2.FallbackPolicy.values())
_NO_HINTS = RoutingHints()
_NO_FEATURES: frozenset[Feature] = frozenset()


def route_call(request: AnyRouteRequest, principal: str, settings: ServerConfig) -> RouteCall:
    """The domain call a request asks for.

    Args:
        request: The request as it came off the wire; left as it was.
        principal: Who the request is authenticated as (empty with auth off).
        settings: The server settings holding the configured request limits.

    Raises:
        InvalidRequest: the request breaks one rule or more; it names them all.
    """
    violations: dict[str, str] = {}
    size = request.ByteSize()
    if size > settings.max_request_bytes:
        violations["request"] = (
            f"is {size} bytes; {exceeds('max_request_bytes', settings.max_request_bytes)}"
        )
    # Each read of a repeated or string field builds a Python object anew:
    # each is read once.
    request_messages = request.messages
    if not request_messages:
        violations["messages"] = "at least one message is required"
    elif len(request_messages) > settings.max_messages:
        violations["messages"] = (
            f"has {len(request_messages)} messages;"
            f" {exceeds('max_messages', settings.max_messages)}"
        )
    messages = []
    any_content = False
    max_message_chars = settings.max_message_chars
    messages_bytes = 0
    tool_turns = False
    for index, message in enumerate(request_messages):
        content = message.content
        any_content = any_content or bool(content)
        number = message.role
        role = _ROLES.get(number)
        if role is None:
            violations[f"messages[{index}].role"] = "must be SYSTEM, USER, ASSISTANT or TOOL"
            role = Role.USER  # a stand-in, keeping the list in step: never served
        elif role is Role.TOOL:
            tool_turns = True  # a tool turn has rules of its own, whatever its size
        messages.append(ChatMessage(role, content))
        messages_bytes += message_bytes(number, content)
        if len(content) > max_message_chars:
            violations[f"messages[{index}].content"] = (
                f"is {len(content)} characters; {exceeds('max_message_chars', max_message_chars)}"
            )
    metadata = request.metadata
    if metadata:
        _check_metadata(metadata, settings, violations)
    if (
        request_messages
        and not any_content
        and not any(message.parts or message.tool_calls for message in request_messages)
    ):
        # Beside a count over the limit, if there is one: every violation at once.
        empty = "every message is empty; at least one needs content"
        too_many = violations.get("messages")
        violations["messages"] = f"{too_many}; {empty}" if too_many else empty
    model, agent, budget_key = request.model, request.agent, request.budget_key
    if not budget_key:
        violations["budget_key"] = "is required"
    additional = tuple(request.additional_budget_keys)
    _check_names(model, agent, budget_key, additional, violations)
    if additional and not _distinct_budgets(budget_key, additional):
        violations["additional_budget_keys"] = (
            f"must be at most {MAX_ADDITIONAL_BUDGETS} non-empty keys,"
            " none repeated or equal to budget_key"
        )
    request_fingerprint = ""
    request_id = request.request_id
    if request_id:
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            violations["request_id"] = f"must be at most {MAX_REQUEST_ID_CHARS} characters"
        request_fingerprint = _fingerprint(request, principal)
    max_output_tokens = None
    if request.HasField("max_output_tokens"):
        max_output_tokens = request.max_output_tokens
        check_tokens(
            "max_output_tokens", max_output_tokens, settings.max_output_tokens_limit, violations
        )
    temperature = None
    if request.HasField("temperature"):
        temperature = request.temperature
        if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
            violations["temperature"] = f"must be between 0 and {MAX_TEMPERATURE}"
    hints = _hints(request, violations)
    plain_bytes = request_bytes(
        messages_bytes,
        model,
        agent,
        budget_key,
        max_output_tokens,
        temperature,
        metadata,
        additional,
        request_id,
        0 if hints is _NO_HINTS else hint_bytes(request),
    )
    options: GenerationOptions | None = None
    extras = False
    if tool_turns or size != plain_bytes:
        # The request holds more than plain chat (see rpc/wire_size.py): the
        # fields beyond it are read, and any field this contract does not
        # know refused (a plain request, its size the sum, holds none).
        if _holds_unknown_fields(request, size):
            _check_unknown_fields(request, "request", violations)
        read = _read_extras(request_messages, messages, settings, violations)
        if read is not None:
            messages, extras = read, True
        if uses_options(request):
            options = generation_options(request, settings, max_output_tokens, violations)
    if violations:
        raise InvalidRequest(violations)
    chat = tuple(messages)
    features = _NO_FEATURES
    if extras or options is not None:
        features = frozenset(call_features(chat, options))
    return RouteCall(
        model=model,
        messages=chat,
        agent=agent,
        budget_key=budget_key,
        max_output_tokens=max_output_tokens,
        temperature=temperature,
        metadata=dict(metadata) if metadata else {},
        hints=hints,
        additional_budget_keys=additional,
        request_id=request_id,
        fingerprint=request_fingerprint,
        principal=principal,
        options=options,
        features=features,
    )


def _read_extras(
    request_messages: Sequence[router_pb2.Message],
    messages: list[ChatMessage],
    settings: ServerConfig,
    violations: dict[str, str],
) -> list[ChatMessage] | None:
    """`messages` (one per request message, in step) with each that holds
    more than its role and text given its extras; None when none does.

    Reading stops once the request has broken more rules than a refusal
    shows (errors.MAX_SHOWN_VIOLATIONS): the rest would not be named, and
    reading them is work a small hostile request could make large.
    """
    read: list[ChatMessage] = []
    conversation: Conversation | None = None
    for index, message in enumerate(request_messages):
        if len(violations) > MAX_SHOWN_VIOLATIONS:
            break
        role = _ROLES.get(message.role)
        if (
            role is Role.TOOL
            or message.tool_call_id
            or message.parts
            or message.tool_calls
            or message.reasoning
        ):
            if conversation is None:
                conversation = Conversation(settings)
                read = messages.copy()
            extras = conversation.extras(index, message, role, violations)
            read[index] = ChatMessage(messages[index].role, messages[index].content, extras)
    return read if conversation is not None else None


def _holds_unknown_fields(request: AnyRouteRequest, size: int) -> bool:
    """Whether the request, of serialized `size`, or any message in it holds
    a field this contract does not know. Found in C, by dropping them from a
    copy and measuring it again: a few microseconds, where the walk that
    names them (`_check_unknown_fields`) costs several per message."""
    known: Message = type(request)()
    known.CopyFrom(request)
    known.DiscardUnknownFields()
    return known.ByteSize() != size


def _check_unknown_fields(message: Message, path: str, violations: dict[str, str]) -> None:
    """Refuses fields a newer client set that this server's contract does
    not know, in `message` or any message it holds, under its path: the
    request would be served without them, which their sender can't know."""
    if len(violations) > MAX_SHOWN_VIOLATIONS:
        return
    unknown = UnknownFieldSet(message)
    if len(unknown):
        numbers = ", ".join(
            str(number) for number in sorted({unknown[i].field_number for i in range(len(unknown))})
        )
        add(
            violations,
            path,
            f"holds fields this server does not know (numbers {numbers});"
            " it would be served without them",
        )
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        name = field.name if path == "request" else f"{path}.{field.name}"
        if field.is_repeated:
            for index, item in enumerate(value):
                _check_unknown_fields(item, f"{name}[{index}]", violations)
        else:
            _check_unknown_fields(value, name, violations)


def _check_metadata(
    metadata: Mapping[str, str], settings: ServerConfig, violations: dict[str, str]
) -> None:
    if len(metadata) > settings.max_metadata_entries:
        violations["metadata"] = (
            f"has {len(metadata)} entries;"
            f" {exceeds('max_metadata_entries', settings.max_metadata_entries)}"
        )
        return
    for key, value in metadata.items():
        if len(key) > settings.max_metadata_key_chars:
            violations[f"metadata[{key[:SHOWN_KEY_CHARS]!r}]"] = (
                f"key is {len(key)} characters;"
                f" {exceeds('max_metadata_key_chars', settings.max_metadata_key_chars)}"
            )
        elif len(value) > settings.max_metadata_value_chars:
            violations[f"metadata[{key!r}]"] = (
                f"value is {len(value)} characters;"
                f" {exceeds('max_metadata_value_chars', settings.max_metadata_value_chars)}"
            )


def _check_names(
    model: str,
    agent: str,
    budget_key: str,
    additional: Sequence[str],
    violations: dict[str, str],
) -> None:
    for field, name in (("model", model), ("agent", agent), ("budget_key", budget_key)):
        if len(name) > MAX_NAME_CHARS:
            violations[field] = f"must be at most {MAX_NAME_CHARS} characters"
    for index, key in enumerate(additional):
        if len(key) > MAX_NAME_CHARS:
            violations[f"additional_budget_keys[{index}]"] = (
                f"must be at most {MAX_NAME_CHARS} characters"
            )


def _distinct_budgets(budget_key: str, additional: tuple[str, ...]) -> bool:
    keys = {budget_key, *additional}
    return (
        len(additional) <= MAX_ADDITIONAL_BUDGETS
        and all(additional)
        and len(keys) == len(additional) + 1
    )


def _fingerprint(request: AnyRouteRequest, principal: str) -> str:
    """Which request this is, its id aside. The RPC counts, so a Route id
    can't replay as a stream; so does the principal, so one principal's
    request id never answers with another's result."""
    request_id = request.request_id
    request.ClearField("request_id")
    serialized = request.SerializeToString(deterministic=True)
    request.request_id = request_id
    caller = f"{type(request).__name__}\0{principal}\0".encode()
    return fingerprint(caller + serialized)


def _hints(request: AnyRouteRequest, violations: dict[str, str]) -> RoutingHints:
    """Reads the routing hints; a request that sets none costs a few field reads."""
    if not (
        request.prefer
        or request.task
        or request.fallback
        or request.explain
        or request.required_capabilities
        or request.HasField("min_quality")
        or request.HasField("max_cost_nano_usd")
        or request.HasField("min_context_tokens")
    ):
        return _NO_HINTS
    min_quality = max_cost = min_context = None
    if request.HasField("min_quality"):
        min_quality = request.min_quality
        if not (math.isfinite(min_quality) and 0 <= min_quality <= 1):  # quality's own scale
            violations["min_quality"] = "must be between 0 and 1"
    if request.HasField("max_cost_nano_usd"):
        max_cost = request.max_cost_nano_usd
        if max_cost < 0:
            violations["max_cost_nano_usd"] = "must not be negative"
    if request.HasField("min_context_tokens"):
        min_context = request.min_context_tokens
        if min_context < 1:
            violations["min_context_tokens"] = "must be positive when set"
    prefer = _PREFERENCES.get(request.prefer)
    if prefer is None:
        violations["prefer"] = "is not a known preference"
    capabilities = set()
    for index, number in enumerate(request.required_capabilities):
        capability = _CAPABILITIES.get(number)
        if capability is None:
            violations[f"required_capabilities[{index}]"] = "is not a known capability"
        else:
            capabilities.add(capability)
    task = TASKS.get(request.task)
    if task is None and request.task != router_pb2.TASK_UNSPECIFIED:
        violations["task"] = "is not a known task"
    if request.fallback not in _FALLBACK_POLICIES:
        violations["fallback"] = "is not a known fallback policy"
    return RoutingHints(
        prefer=prefer or Preference.BALANCED,
        min_quality=min_quality,
        max_cost_nano_usd=max_cost,
        capabilities=frozenset(capabilities),
        min_context_tokens=min_context,
        task=task,
        fallback=request.fallback != router_pb2.FALLBACK_POLICY_NONE,
        explain=request.explain,
    )
