"""The RouterService servicer: proto in, domain call, proto out.

Every call takes the same steps before the gateway sees it (`_admitted`,
then `_checked`): the drain's gate, admission control, the credential, the
request's translation (rpc/translate.py), the principal's grants, the
deadline (the caller's or the configured default: no call is ever
unbounded) and the principal's own limits. Whatever a call fails with
becomes its status in rpc/status.py: a `FaregateError` with its rich
details, anything else INTERNAL with a trace id, the traceback going to the
log only.

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
from contextlib import aclosing
from typing import Any, NoReturn, TypedDict

import grpc
from faregate.v1 import router_pb2, router_pb2_grpc

from faregate_server.config.schema import PrincipalConfig, ServerConfig
from faregate_server.domain import (
    AttemptOutcome,
    FinishReason,
    RouteCall,
    RouteResult,
    RoutingDecision,
    StreamFinished,
    TaskKind,
    Usage,
)
from faregate_server.errors import InvalidRequest
from faregate_server.routing.gateway import Gateway, StreamItem
from faregate_server.routing.scope import CallScope
from faregate_server.rpc.admission import AdmissionControl
from faregate_server.rpc.drain import Drain, TrackedCall
from faregate_server.rpc.render import (
    add_answer_extras,
    add_finish_extras,
    add_usage_parts,
    delta_event,
    has_usage_parts,
)
from faregate_server.rpc.status import abort, status_for
from faregate_server.rpc.translate import TASKS, AnyRouteRequest, route_call
from faregate_server.security.auth import Authenticator, authorize
from faregate_server.telemetry.observation import Telemetry
from faregate_server.telemetry.request_observation import RpcObserver

logger = logging.getLogger(__name__)

_FINISH_REASONS = {
    FinishReason.UNSPECIFIED: router_pb2.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: router_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: router_pb2.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: router_pb2.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: router_pb2.FINISH_REASON_TOOL_CALLS,
    FinishReason.REFUSAL: router_pb2.FINISH_REASON_REFUSAL,
    FinishReason.PAUSE_TURN: router_pb2.FINISH_REASON_PAUSE_TURN,
    FinishReason.CONTEXT_WINDOW_EXCEEDED: router_pb2.FINISH_REASON_CONTEXT_WINDOW_EXCEEDED,
}
_TASK_NUMBERS: dict[TaskKind | None, router_pb2.Task.ValueType] = {
    kind: number for number, kind in TASKS.items()
}
_TASK_NUMBERS[None] = router_pb2.TASK_UNSPECIFIED
_OUTCOMES = {
    AttemptOutcome.SUCCEEDED: router_pb2.ATTEMPT_OUTCOME_SUCCEEDED,
    AttemptOutcome.FAILED: router_pb2.ATTEMPT_OUTCOME_FAILED,
    AttemptOutcome.CANCELLED: router_pb2.ATTEMPT_OUTCOME_CANCELLED,
}
_CALLER_DEADLINE_GRACE_S = 0.05
_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
_ROUTE = f"{_SERVICE}/Route"
_STREAM_ROUTE = f"{_SERVICE}/StreamRoute"

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
            tracked = self._admitted()
            with tracked:
                principal, call, deadline_s = self._checked(request, context)
                with self._auth.admit(principal):
                    async with asyncio.timeout_at(deadline_s):
                        observation.called(call)
                        scope = CallScope(deadline_s, observation, tracked.committing)
                        result = await self._gateway.route(call, scope)
        except Exception as error:
            await abort(context, error, request.model, observation)
        return route_response(result)

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
            tracked = self._admitted()
            with tracked:
                principal, call, deadline_s = self._checked(request, context)
                scope_s = deadline_s
                if context.time_remaining() is not None:
                    # The caller's deadline is gRPC's too: it ends the call
                    # (and this handler) itself then. This scope is a backstop
                    # a moment later, so a status of ours never races gRPC's
                    # end onto a call already gone (gRPC logs that as an error).
                    scope_s += _CALLER_DEADLINE_GRACE_S
                observation.called(call)
                scope = CallScope(deadline_s, observation, tracked.committing)
                with self._auth.admit(principal):
                    async with (
                        asyncio.timeout_at(scope_s),
                        aclosing(self._gateway.stream(call, scope)) as events,
                    ):
                        async for event in events:
                            tracked.writing()
                            try:
                                await context.write(stream_event(event))
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
            status = status_for(error, request.model, observation)
            context.set_code(status.code)
            context.set_details(status.message)
            context.set_trailing_metadata(status.trailers)

    def _admitted(self) -> TrackedCall:
        """A call past the drain's gate and admission control, to track for
        the drain with `with` (in which `_checked` then takes it through the
        rest of the steps before the gateway, and `Authenticator.admit` holds
        the principal's concurrency slot). Plain `with` blocks in each
        handler rather than one @contextmanager: a generator's setup costs
        several times theirs, on every call.

        Raises:
            ShuttingDown, ServerOverloaded: the step that refused the call says why.
        """
        tracked = self._drain.track()
        # After the drain's gate (a stopping server says so, however
        # loaded) and before the credential is read: shedding a flood
        # must cost less than anything the call would do.
        self._admission.check()
        return tracked

    def _checked(
        self, request: AnyRouteRequest, context: AnyContext
    ) -> tuple[PrincipalConfig, RouteCall, float]:
        """Authenticates a call, translates its request, authorizes it and
        gives it its deadline: its principal, its domain call and its
        deadline (loop time).

        Raises:
            FaregateError: the step that refused the call says why.
        """
        principal = self._auth.authenticate(context)
        call = route_call(request, principal.name, self._settings)
        authorize(principal, call, self._gateway.catalog)
        return principal, call, self._deadline(context)

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


def _fill_served(
    message: router_pb2.RouteResponse | StreamEvent.StreamStart, decision: RoutingDecision
) -> None:
    """The decision's attempts and candidates, added to the message in place
    (a nested message built apart and handed in is built twice)."""
    for record in decision.attempts:
        message.attempts.add(
            model=record.model,
            outcome=_OUTCOMES[record.outcome],
            latency_us=round(record.latency_s * 1e6),
            cost_nano_usd=record.cost_nano_usd,
            hedge=record.hedge,
            reason=record.reason,
        )
    for score in decision.candidates:
        message.candidates.add(
            model=score.model,
            feasible=score.feasible,
            reason=score.reason,
            score=score.score,
            worst_case_nano_usd=score.worst_case_nano_usd,
            quality=score.quality,
            scarcity=score.scarcity,
        )


def _fill_usage(message: router_pb2.Usage, usage: Usage) -> None:
    message.SetInParent()  # present even at zero tokens, as one built apart would be
    message.input_tokens = usage.input_tokens
    message.output_tokens = usage.output_tokens
    if has_usage_parts(usage):
        add_usage_parts(message, usage)


class _Served(TypedDict):
    """Who served and how it was chosen: the scalar fields RouteResponse and
    StreamStart share, mapped in this one place (`_served`; the repeated
    ones in `_fill_served`). Spread as keyword arguments into both, so mypy
    checks every name and type against each message: a field renamed in the
    proto fails the type check."""

    model_used: str
    provider: str
    request_id: str
    reserved_nano_usd: int
    model_version: str
    task: router_pb2.Task.ValueType


def _served(decision: RoutingDecision) -> _Served:
    return {
        "model_used": decision.model,
        "provider": decision.provider,
        "request_id": decision.request_id,
        "reserved_nano_usd": decision.reserved_nano_usd,
        "model_version": decision.model_version,
        "task": _TASK_NUMBERS[decision.task],
    }


def route_response(result: RouteResult) -> router_pb2.RouteResponse:
    """The RouteResponse of a served request."""
    response = router_pb2.RouteResponse(
        output=result.output,
        finish_reason=_FINISH_REASONS[result.finish_reason],
        cost_nano_usd=result.cost_nano_usd,
        budget_remaining_nano_usd=result.budget_remaining_nano_usd,
        **_served(result.decision),
    )
    _fill_usage(response.usage, result.usage)
    _fill_served(response, result.decision)
    if result.tool_calls or result.refusal or result.reasoning:
        add_answer_extras(response, result)
    return response


def stream_event(event: StreamItem) -> StreamEvent:
    """The StreamRouteResponse of one item of a served stream."""
    if isinstance(event, str):
        return StreamEvent(delta=StreamEvent.StreamDelta(text=event))
    if isinstance(event, RoutingDecision):
        message = StreamEvent(start=StreamEvent.StreamStart(**_served(event)))
        _fill_served(message.start, event)
        return message
    if not isinstance(event, StreamFinished):
        return delta_event(event)
    message = StreamEvent(
        finish=StreamEvent.StreamFinish(
            usage=router_pb2.Usage(
                input_tokens=event.usage.input_tokens, output_tokens=event.usage.output_tokens
            ),
            cost_nano_usd=event.cost_nano_usd,
            budget_remaining_nano_usd=event.budget_remaining_nano_usd,
            finish_reason=_FINISH_REASONS[event.finish_reason],
        )
    )
    if has_usage_parts(event.usage):
        add_usage_parts(message.finish.usage, event.usage)
    if event.tool_calls or event.reasoning:
        add_finish_extras(message.finish, event)
    return message


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
