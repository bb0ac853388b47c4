"""One RPC's observation: what it did, gathered as it runs, read once when it ends.

The servicer begins one per Route or StreamRoute call (through
`Telemetry.observe`) and hands it to the core in the call's scope, where it
is the core's `RequestObserver` (routing/scope.py); the servicer itself notes
the validated call and the status the RPC ends with. When the RPC ends, the
metrics and the request log read it. It imports neither of them.

Times are on the event loop's clock, as the core's attempt latencies and
deadlines are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from opentelemetry import trace
from opentelemetry.trace import Span

from faregate_server.domain import AttemptRecord, RouteCall, RoutingDecision, Usage
from faregate_server.routing.scope import RequestObserver, Unobserved

if TYPE_CHECKING:
    from faregate_server.upstream.catalog import Deployment


class RpcObserver(RequestObserver, Protocol):
    """The observation as the servicer sees it: the core's observer, plus
    the call it validated and the status it ended the RPC with."""

    def called(self, call: RouteCall) -> None:
        """The request, validated."""
        ...

    def failed(self, code: str, reason: str) -> None:
        """The gRPC status code name the RPC ends with, and faregate's ErrorInfo reason."""
        ...


class RequestObservation:
    """What one RPC did; see the module docstring."""

    __slots__ = (
        "_perf_s",
        "call",
        "code",
        "cost_nano_usd",
        "first_output_s",
        "input_tokens",
        "method",
        "model",
        "output_tokens",
        "provider",
        "reason",
        "records",
        "request_id",
        "route",
        "span",
        "started_s",
        "usage",
    )

    def __init__(self, method: str, span: Span | None, perf_s: Callable[[], float]) -> None:
        """Starts now on the stopwatch `perf_s` (`Clock.perf_s`)."""
        self.method = method
        self.span = span
        self._perf_s = perf_s
        self.started_s = perf_s()
        self.call: RouteCall | None = None
        self.request_id = ""
        self.route = ""
        self.model = ""
        """A configured model name (never the caller's free text): label-safe."""
        self.provider = ""
        self.records: Sequence[AttemptRecord] = ()
        self.input_tokens = 0
        self.output_tokens = 0
        self.usage: Usage | None = None
        """The charged usage, with its parts; None until settled."""
        self.cost_nano_usd = 0
        self.first_output_s: float | None = None
        self.code = "OK"
        self.reason = ""

    @property
    def trace_id(self) -> str:
        if self.span is None:
            return ""
        return trace.format_trace_id(self.span.get_span_context().trace_id)

    def elapsed_s(self) -> float:
        """Seconds since the RPC began."""
        return self._perf_s() - self.started_s

    def called(self, call: RouteCall) -> None:
        self.call = call
        self.request_id = call.request_id

    def planned(
        self, request_id: str, route: str, first: Deployment, records: Sequence[AttemptRecord]
    ) -> None:
        self.request_id = request_id
        self.route = route
        self.model = first.name
        self.provider = first.config.provider.value
        self.records = records
        span = self.span
        if span is not None:
            span.set_attribute("faregate.request_id", request_id)
            span.set_attribute("faregate.route", route)

    def served(self, decision: RoutingDecision) -> None:
        self.model = decision.model
        self.provider = decision.provider
        self.records = decision.attempts

    def first_output(self) -> None:
        if self.first_output_s is None:
            self.first_output_s = self.elapsed_s()

    def settled(self, usage: Usage, cost_nano_usd: int) -> None:
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.usage = usage
        self.cost_nano_usd = cost_nano_usd

    def failed(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason


class _NotObserved(Unobserved):
    """The observation of an RPC when nothing observes RPCs."""

    __slots__ = ()

    def called(self, call: RouteCall) -> None:
        pass

    def failed(self, code: str, reason: str) -> None:
        pass


NOT_OBSERVED: RpcObserver = _NotObserved()
"""Records nothing: what an RPC gets with traces, metrics and request logs all off."""
