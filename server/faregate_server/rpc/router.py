"""The RouterService servicer: proto in, domain call, proto out.

It validates and translates requests, runs them under the caller's deadline
(or the configured default: no call is ever unbounded), and turns every
`FaregateError` into a status with rich details. Anything else is a bug and
becomes INTERNAL with a trace id; the traceback goes to the log only.

Each call is observed here, from its first step to its status
(`Telemetry.observe`), and runs in a `CallScope` handed to the gateway: its
deadline, its observation, and its drain tracking's commit hook.

A stream writes one event at a time: `context.write` completes once gRPC's
HTTP/2 flow control has let the message out to the caller (into the
caller's receive window), and only then is the next event pulled from the
gateway, and through it from the upstream. A caller that reads slowly thus
slows the upstream read down to its own pace. A stream ends with its status
set and the handler returning at once, never waiting on the caller to read
what is still queued: past its deadline the handler ends at the deadline
and its upstream is closed then, however full the caller's window is.
A write to a call gRPC has already ended (the caller cancelled, or gRPC's
own deadline fired first) is an expected end, not an error: the stream
settles as interrupted and ends quietly, CANCELLED or DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Mapping
from contextlib import aclosing
from typing import Any, NoReturn

import grpc
from faregate.v1 import router_pb2, router_pb2_grpc

from faregate_server.config.schema import ServerConfig
from faregate_server.domain import (
    AttemptOutcome,
    AttemptRecord,
    CandidateScore,
    Capability,
    ChatMessage,
    FinishReason,
    Preference,
    Role,
    RouteCall,
    RoutingDecision,
    RoutingHints,
    StreamFinished,
    TaskKind,
    Usage,
)
from faregate_server.errors import (
    DeadlineExceeded,
    FaregateError,
    InvalidRequest,
    Metadata,
    internal_error_status,
)
from faregate_server.routing.gateway import Gateway
from faregate_server.routing.scope import CallScope
from faregate_server.rpc.admission import AdmissionControl
from faregate_server.rpc.drain import Drain
from faregate_server.security.auth import Authenticator, authorize
from faregate_server.state.replay import fingerprint
from faregate_server.telemetry.observation import Telemetry
from faregate_server.telemetry.request_observation import NOT_OBSERVED, RpcObserver

logger = logging.getLogger(__name__)

_ROLES = {
    router_pb2.ROLE_SYSTEM: Role.SYSTEM,
    router_pb2.ROLE_USER: Role.USER,
    router_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
}
_FINISH_REASONS = {
    FinishReason.UNSPECIFIED: router_pb2.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: router_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: router_pb2.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: router_pb2.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: router_pb2.FINISH_REASON_TOOL_CALLS,
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
_TASKS = {
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
_TASK_NUMBERS: dict[TaskKind | None, router_pb2.Task.ValueType] = {
    kind: number for number, kind in _TASKS.items()
}
_TASK_NUMBERS[None] = router_pb2.TASK_UNSPECIFIED
_OUTCOMES = {
    AttemptOutcome.SUCCEEDED: router_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    AttemptOutcome.FAILED: router_pb2.ATTEMPT_OUTCOME_FAILED,
    AttemptOutcome.CANCELLED: router_pb2.ATTEMPT_OUTCOME_CANCELLED,
}
_NO_HINTS = RoutingHints()
_FALLBACK_POLICIES = frozenset(router_pb2.FallbackPolicy.values())
_MAX_TEMPERATURE = 2.0
_MAX_ADDITIONAL_BUDGETS = 8
_MAX_REQUEST_ID_CHARS = 128
_MAX_NAME_CHARS = 256
_CALLER_DEADLINE_GRACE_S = 0.05
_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
_ROUTE = f"{_SERVICE}/Route"
_STREAM_ROUTE = f"{_SERVICE}/StreamRoute"

AnyRouteRequest = router_pb2.RouteRequest | router_pb2.StreamRouteRequest
StreamEvent = router_pb2.StreamRouteResponse
RouteContext = grpc.aio.ServicerContext[router_pb2.RouteRequest, router_pb2.RouteResponse]
StreamContext = grpc.aio.ServicerContext[router_pb2.StreamRouteRequest, StreamEvent]
AnyContext = RouteContext | StreamContext


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        gateway: Gateway,
        settings: ServerConfig,
        authenticator: Authenticator,
        drain: Drain,
        admission: AdmissionControl,
        telemetry: Telemetry,
    ) -> None:
        self._gateway = gateway
        self._settings = settings
        self._auth = authenticator
        self._drain = drain
        self._admission = admission
        self._telemetry = telemetry

    async def Route(
        self, request: router_pb2.RouteRequest, context: RouteContext
    ) -> router_pb2.RouteResponse:
        with self._telemetry.observe(_ROUTE, context.invocation_metadata) as observation:
            return await self._route(request, context, observation)

    async def StreamRoute(  # type: ignore[override]  # grpc.aio also takes a coroutine
        self, request: router_pb2.StreamRouteRequest, context: StreamContext
    ) -> None:
        with self._telemetry.observe(_STREAM_ROUTE, context.invocation_metadata) as observation:
            await self._stream_route(request, context, observation)

    async def _route(
        self, request: router_pb2.RouteRequest, context: RouteContext, observation: RpcObserver
    ) -> router_pb2.RouteResponse:
        try:
            tracked = self._drain.track()
            # After the drain's gate (a stopping server says so, however
            # loaded) and before the credential is read: shedding a flood
            # must cost less than anything the call would do.
            self._admission.check()
            with tracked:
                principal = self._auth.authenticate(context)
                call = self._to_call(request, principal.name)
                authorize(principal, call, self._gateway.catalog)
                deadline_s = self._deadline(context)
                with self._auth.admit(principal):
                    async with asyncio.timeout_at(deadline_s):
                        observation.called(call)
                        scope = CallScope(deadline_s, observation, tracked.committing)
                        result = await self._gateway.route(call, scope)
        except Exception as error:
            await abort(context, error, request.model, observation)
        return router_pb2.RouteResponse(
            output=result.output,
            finish_reason=_FINISH_REASONS[result.finish_reason],
            usage=_usage(result.usage),
            cost_nano_usd=result.cost_nano_usd,
            budget_remaining_nano_usd=result.budget_remaining_nano_usd,
            **_served(result.decision),
        )

    async def _stream_route(
        self,
        request: router_pb2.StreamRouteRequest,
        context: StreamContext,
        observation: RpcObserver,
    ) -> None:
        # Written with context.write rather than as an async generator so the
        # deadline scope covers the writes too and fires inside this frame.
        # A shutdown may cut the stream between writes, never during one.
        try:
            tracked = self._drain.track()
            self._admission.check()
            with tracked:
                principal = self._auth.authenticate(context)
                call = self._to_call(request, principal.name)
                authorize(principal, call, self._gateway.catalog)
                deadline_s = self._deadline(context)
                scope_s = deadline_s
                if context.time_remaining() is not None:
                    # The caller's deadline is gRPC's too: it ends the call
                    # (and this handler) itself then. This scope is a backstop
                    # a moment later, so a status of ours never races gRPC's
                    # end onto a call already gone (gRPC logs that as an error).
                    scope_s += _CALLER_DEADLINE_GRACE_S
                with self._auth.admit(principal):
                    observation.called(call)
                    scope = CallScope(deadline_s, observation, tracked.committing)
                    async with (
                        asyncio.timeout_at(scope_s),
                        aclosing(self._gateway.stream(call, scope)) as events,
                    ):
                        async for event in events:
                            tracked.writing()
                            try:
                                await context.write(_stream_event(event))
                            except grpc.aio.InternalError:
                                # The write's batch failed in gRPC's core: the
                                # call is over (cancelled, or past its deadline).
                                raise _CallEnded from None
                            tracked.written()
        except _CallEnded:
            _observe_ended(context, observation)
            # Ended the way gRPC ends a handler whose call it cancelled: a
            # return would make it send a status on the dead call and log
            # that failure, with a traceback, as an unexpected error.
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            _observe_ended(context, observation)  # gRPC ended the call: cancelled, or its deadline
            raise
        except Exception as error:
            # Not `abort`: that waits until the caller has read every message
            # still queued, which a slow reader may take minutes to do.
            code, message, trailers = _status(error, request.model, observation)
            context.set_code(code)
            context.set_details(message)
            context.set_trailing_metadata(trailers)

    async def refuse_undecodable(
        self, method: str, message_name: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> NoReturn:
        """Ends the RPC `method` ("Route", "StreamRoute") whose request bytes
        did not parse as a `message_name`: INVALID_ARGUMENT, observed like
        any other RPC of the service."""
        observed = self._telemetry.observe(f"{_SERVICE}/{method}", context.invocation_metadata)
        with observed as observation:
            error = InvalidRequest({"request": f"is not a valid {message_name}"})
            await abort(context, error, "", observation)

    def _deadline(self, context: AnyContext) -> float:
        remaining_s: float | None = context.time_remaining()
        if remaining_s is None:
            remaining_s = self._settings.default_deadline_s
        return asyncio.get_running_loop().time() + remaining_s

    def _to_call(self, request: AnyRouteRequest, principal: str) -> RouteCall:
        settings = self._settings
        violations: dict[str, str] = {}
        size = request.ByteSize()
        if size > settings.max_request_bytes:
            violations["request"] = (
                f"is {size} bytes; {_exceeds('max_request_bytes', settings.max_request_bytes)}"
            )
        if not request.messages:
            violations["messages"] = "at least one message is required"
        elif len(request.messages) > settings.max_messages:
            violations["messages"] = (
                f"has {len(request.messages)} messages;"
                f" {_exceeds('max_messages', settings.max_messages)}"
            )
        messages = []
        for index, message in enumerate(request.messages):
            role = _ROLES.get(message.role)
            if role is None:
                violations[f"messages[{index}].role"] = "must be SYSTEM, USER or ASSISTANT"
            else:
                messages.append(ChatMessage(role, message.content))
            if len(message.content) > settings.max_message_chars:
                violations[f"messages[{index}].content"] = (
                    f"is {len(message.content)} characters;"
                    f" {_exceeds('max_message_chars', settings.max_message_chars)}"
                )
        if request.metadata:
            _check_metadata(request.metadata, settings, violations)
        if request.messages and not any(message.content for message in request.messages):
            violations["messages"] = "every message is empty; at least one needs content"
        if not request.budget_key:
            violations["budget_key"] = "is required"
        _check_names(request, violations)
        additional = tuple(request.additional_budget_keys)
        if additional and not _distinct_budgets(request.budget_key, additional):
            violations["additional_budget_keys"] = (
                f"must be at most {_MAX_ADDITIONAL_BUDGETS} non-empty keys,"
                " none repeated or equal to budget_key"
            )
        fingerprint = ""
        if request.request_id:
            if len(request.request_id) > _MAX_REQUEST_ID_CHARS:
                violations["request_id"] = f"must be at most {_MAX_REQUEST_ID_CHARS} characters"
            fingerprint = _fingerprint(request, principal)
        max_output_tokens = None
        if request.HasField("max_output_tokens"):
            max_output_tokens = request.max_output_tokens
            limit = settings.max_output_tokens_limit
            if max_output_tokens < 1:
                violations["max_output_tokens"] = "must be positive when set"
            elif max_output_tokens > limit:
                violations["max_output_tokens"] = (
                    f"is {max_output_tokens}; {_exceeds('max_output_tokens_limit', limit)}"
                )
        temperature = None
        if request.HasField("temperature"):
            temperature = request.temperature
            if not (math.isfinite(temperature) and 0 <= temperature <= _MAX_TEMPERATURE):
                violations["temperature"] = f"must be between 0 and {_MAX_TEMPERATURE}"
        hints = _hints(request, violations)
        if violations:
            raise InvalidRequest(violations)
        return RouteCall(
            model=request.model,
            messages=tuple(messages),
            agent=request.agent,
            budget_key=request.budget_key,
            max_output_tokens=max_output_tokens,
            temperature=temperature,
            metadata=dict(request.metadata),
            hints=hints,
            additional_budget_keys=additional,
            request_id=request.request_id,
            fingerprint=fingerprint,
            principal=principal,
        )


def _exceeds(setting: str, limit: int) -> str:
    """Names the server setting a request broke, so the caller knows what to shrink."""
    return f"exceeds server.{setting} ({limit})"


def _check_metadata(
    metadata: Mapping[str, str], settings: ServerConfig, violations: dict[str, str]
) -> None:
    if len(metadata) > settings.max_metadata_entries:
        violations["metadata"] = (
            f"has {len(metadata)} entries;"
            f" {_exceeds('max_metadata_entries', settings.max_metadata_entries)}"
        )
        return
    for key, value in metadata.items():
        # The key is shown cut short: it may be the very thing that is too long.
        if len(key) > settings.max_metadata_key_chars:
            violations[f"metadata[{key[:32]!r}]"] = (
                f"key is {len(key)} characters;"
                f" {_exceeds('max_metadata_key_chars', settings.max_metadata_key_chars)}"
            )
        elif len(value) > settings.max_metadata_value_chars:
            violations[f"metadata[{key!r}]"] = (
                f"value is {len(value)} characters;"
                f" {_exceeds('max_metadata_value_chars', settings.max_metadata_value_chars)}"
            )


def _check_names(request: AnyRouteRequest, violations: dict[str, str]) -> None:
    """Names of configured things are short; a huge one is refused before it
    reaches an error message, a log line or the ledger."""
    names = [
        ("model", request.model),
        ("agent", request.agent),
        ("budget_key", request.budget_key),
        *(
            (f"additional_budget_keys[{index}]", key)
            for index, key in enumerate(request.additional_budget_keys)
        ),
    ]
    for field, name in names:
        if len(name) > _MAX_NAME_CHARS:
            violations[field] = f"must be at most {_MAX_NAME_CHARS} characters"


def _distinct_budgets(budget_key: str, additional: tuple[str, ...]) -> bool:
    keys = {budget_key, *additional}
    return (
        len(additional) <= _MAX_ADDITIONAL_BUDGETS
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
        if not (math.isfinite(min_quality) and 0 <= min_quality <= 1):
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
    task = _TASKS.get(request.task)
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


def _attempts(records: tuple[AttemptRecord, ...]) -> list[router_pb2.Attempt]:
    return [
        router_pb2.Attempt(
            model=record.model,
            outcome=_OUTCOMES[record.outcome],
            latency_us=round(record.latency_s * 1e6),
            cost_nano_usd=record.cost_nano_usd,
            hedge=record.hedge,
            reason=record.reason,
        )
        for record in records
    ]


def _candidates(scores: tuple[CandidateScore, ...]) -> list[router_pb2.CandidateScore]:
    return [
        router_pb2.CandidateScore(
            model=score.model,
            feasible=score.feasible,
            reason=score.reason,
            score=score.score,
            worst_case_nano_usd=score.worst_case_nano_usd,
            quality=score.quality,
            scarcity=score.scarcity,
        )
        for score in scores
    ]


def _served(decision: RoutingDecision) -> dict[str, Any]:
    """Who served and how it was chosen: the fields RouteResponse and
    StreamStart share, mapped in this one place."""
    return {
        "model_used": decision.model,
        "provider": decision.provider,
        "request_id": decision.request_id,
        "reserved_nano_usd": decision.reserved_nano_usd,
        "model_version": decision.model_version,
        "task": _TASK_NUMBERS[decision.task],
        "attempts": _attempts(decision.attempts),
        "candidates": _candidates(decision.candidates),
    }


def _stream_event(event: RoutingDecision | str | StreamFinished) -> StreamEvent:
    if isinstance(event, str):
        return StreamEvent(delta=StreamEvent.StreamDelta(text=event))
    if isinstance(event, RoutingDecision):
        return StreamEvent(start=StreamEvent.StreamStart(**_served(event)))
    return StreamEvent(
        finish=StreamEvent.StreamFinish(
            usage=_usage(event.usage),
            cost_nano_usd=event.cost_nano_usd,
            budget_remaining_nano_usd=event.budget_remaining_nano_usd,
            finish_reason=_FINISH_REASONS[event.finish_reason],
        )
    )


def _usage(usage: Usage) -> router_pb2.Usage:
    return router_pb2.Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)


class _CallEnded(Exception):
    """A write failed because gRPC had already ended the call."""


def _observe_ended(context: StreamContext, observation: RpcObserver) -> None:
    remaining_s = context.time_remaining()
    if remaining_s is not None and remaining_s <= 0:
        code, reason = grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"
    else:
        code, reason = grpc.StatusCode.CANCELLED, "CANCELLED"
    logger.debug("stream ended by gRPC (%s)", code.name)
    observation.failed(code.name, reason)


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    error: Exception,
    model: str,
    observation: RpcObserver = NOT_OBSERVED,
) -> NoReturn:
    """Ends the call with the status for error: the one place errors meet the wire.
    The status is noted on the RPC's `observation`, if it has one."""
    code, message, trailers = _status(error, model, observation)
    await context.abort(code, message, trailers)
    raise AssertionError("abort returned")  # pragma: no cover


def _status(
    error: Exception, model: str, observation: RpcObserver
) -> tuple[grpc.StatusCode, str, Metadata]:
    """The status for error, noted on the observation; an unexpected one is logged."""
    if isinstance(error, TimeoutError):
        error = DeadlineExceeded("the request's deadline passed", model=model)
    try:
        if not isinstance(error, FaregateError):
            raise error
        code, message, trailers = error.to_grpc()
        reason = error.reason
    except Exception as unexpected:  # a bug, or a status that could not be built
        trace_id = uuid.uuid4().hex
        logger.error(
            "unexpected error serving a request (trace id %s)", trace_id, exc_info=unexpected
        )
        code, message, trailers = internal_error_status(trace_id)
        reason = "INTERNAL"
    observation.failed(code.name, reason)
    return code, message, trailers
