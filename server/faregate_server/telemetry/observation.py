"""Telemetry: traces, metrics and the request log, and the hooks the core path calls.

`Telemetry` is built once by the composition root from `telemetry:` config
(or from a tracer provider handed in, as tests do; metrics, and the sink of
request lines if they go to one, come in built). It
implements the core's server-wide `Hooks` (routing/hooks.py): spans for
selection, reservations, pool waits and attempts, and the implausible-usage,
overrun and stream-cut counts. Each Route and StreamRoute call is observed by the servicer itself:
`observe()` begins one `RequestObservation` (request_observation.py) that the
servicer hands to the core in the call's scope, and ends it as the call
ends, feeding the metrics and the request log and ending the server span.

Traces, when on: a SERVER span per RPC (its parent read from the caller's
W3C `traceparent`/`tracestate` metadata), with children for selection, each
budget reservation, each wait for a worker slot, and each upstream attempt
(a CLIENT span with provider, model, HTTP status and tokens). The attempt's
context is injected into its upstream HTTP request, so one trace runs from
the agent through faregate to the provider.

Cost when off: every hook is a method that returns at once, or hands back a
shared no-op; no span object is ever made with tracing off, and with
metrics and request logs off too an RPC's observation is a shared no-op.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from faregate_server import __version__
from faregate_server.config.schema import TelemetryConfig
from faregate_server.domain import ImplausibleUsage, ReportedUsage, Usage
from faregate_server.telemetry.request_log import LineSink, RequestLog
from faregate_server.telemetry.request_observation import (
    NOT_OBSERVED,
    RequestObservation,
    RpcObserver,
)

if TYPE_CHECKING:
    from faregate_server.telemetry.metrics import GatewayMetrics
    from faregate_server.upstream.catalog import Deployment
    from faregate_server.upstream.providers import UpstreamError

SERVICE_NAME = "faregate"
_SCOPE = "faregate_server"
_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: AbstractContextManager[None] = nullcontext()
Metadata = Iterable[tuple[str, str | bytes]]


class Telemetry:
    """Traces, metrics and the request log for one server; see the module docstring."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        metrics: GatewayMetrics | None = None,
        now_s: Callable[[], float] = time.time,
        perf_s: Callable[[], float] = time.perf_counter,
        request_lines: LineSink | None = None,
    ) -> None:
        """`now_s` is the wall clock that dates request log lines (the
        server's `Clock.now_s`, as for spend records); `perf_s` the stopwatch
        that times each RPC (its `Clock.perf_s`); `request_lines` takes the
        lines as bytes (None: the `faregate.requests` logger)."""
        self._perf_s = perf_s
        self.config = config
        self._owned_tracer_provider: TracerProvider | None = None
        if tracer_provider is None and config.otlp_endpoint:
            tracer_provider = self._owned_tracer_provider = _otlp_tracer_provider(config)
        self._tracer = tracer_provider.get_tracer(_SCOPE, __version__) if tracer_provider else None
        self.metrics = metrics
        self._log = (
            RequestLog(config.log_prompts, now_s, request_lines) if config.request_log else None
        )
        self.observing = bool(self._tracer or self.metrics or self._log)
        """Whether RPCs are observed at all; if not, `observe` costs next to nothing."""

    @property
    def tracing(self) -> bool:
        return self._tracer is not None

    def shutdown(self) -> None:
        """Flushes and stops what this object built itself (not providers handed in)."""
        if self._owned_tracer_provider is not None:
            self._owned_tracer_provider.shutdown()

    # -- an RPC's edges (the servicer's) -------------------------------------

    def observe(
        self, method: str, metadata: Callable[[], Metadata | None]
    ) -> AbstractContextManager[RpcObserver]:
        """Observes the RPC `method` ("package.Service/Method") for the block,
        which must run in the RPC's task; `metadata` gives the caller's
        metadata (read only when tracing, for the caller's trace context).

        The block's exception, if any, ends the observation too: one faregate
        did not map (see `RpcObserver.failed`) ends it CANCELLED or UNKNOWN.
        """
        if not self.observing:
            return _NOT_OBSERVING
        service, _, name = method.rpartition("/")
        span = None
        span_token: object = None
        if self._tracer is not None:
            carrier = {
                key: value
                for key, value in metadata() or ()
                if key in _TRACE_HEADERS and isinstance(value, str)
            }
            parent = _PROPAGATOR.extract(carrier) if carrier else None
            span = self._tracer.start_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            )
            span_token = otel_context.attach(trace.set_span_in_context(span, parent))
        observation = RequestObservation(name, span, self._perf_s)
        return _Observing(self, observation, span_token)

    def _end(
        self, observation: RequestObservation, span_token: object, error: BaseException | None
    ) -> None:
        """Ends an RPC's observation: its span, its metrics and its log line."""
        if error is not None and observation.code == "OK":
            # Not an error faregate mapped (the servicer notes those): the
            # caller left, or a bug that grpc turns into UNKNOWN.
            observation.code = "CANCELLED" if _is_cancellation(error) else "UNKNOWN"
        latency_s = observation.elapsed_s()
        span = observation.span
        if span is not None:
            _end_server_span(span, observation)
            otel_context.detach(span_token)  # type: ignore[arg-type]
        if self.metrics is not None:
            self.metrics.record_request(observation, latency_s)
        if self._log is not None:
            self._log.write(observation, latency_s)

    # -- the core's hooks (routing/hooks.py) ---------------------------------

    def implausible_usage(self, deployment: Deployment, usage: ImplausibleUsage) -> None:
        """An upstream answer whose reported usage was not believed."""
        if self.metrics is not None:
            self.metrics.count_implausible_usage(deployment.name, usage.flaw.value)

    def overrun(self, deployment: Deployment, overrun_nano_usd: int) -> None:
        """A request charged past its reservation."""
        if self.metrics is not None:
            self.metrics.count_overrun(deployment.name, overrun_nano_usd)

    def stream_cut(self, deployment: Deployment) -> None:
        """A stream cut at its reserved output."""
        if self.metrics is not None:
            self.metrics.count_stream_cut(deployment.name)

    def span(self, name: str, model: str = "") -> AbstractContextManager[Any]:
        """A leaf span (a child of the current span, never current itself) for
        the block, or a shared no-op when tracing is off."""
        if self._tracer is None:
            return _NO_SPAN
        attributes = {"faregate.model": model} if model else None
        return _LeafSpan(self._tracer.start_span(name, attributes=attributes))

    def pool_wait(self, deployment: Deployment) -> AbstractContextManager[Any] | None:
        """A `faregate.pool.wait` span for the wait for a worker slot, with the
        pool's load as it begins; None when tracing is off."""
        if self._tracer is None:
            return None
        statistics = deployment.pool.statistics()
        span = self._tracer.start_span(
            "faregate.pool.wait",
            attributes={
                "faregate.model": deployment.name,
                "faregate.pool.in_use": statistics.in_use,
                "faregate.pool.waiting": statistics.waiting,
            },
        )
        return _LeafSpan(span)

    def attempt(self, deployment: Deployment) -> UpstreamAttempt:
        """A CLIENT span for one upstream attempt, or a shared no-op when off."""
        if self._tracer is None:
            return _NO_ATTEMPT
        span = self._tracer.start_span(
            f"chat {deployment.config.upstream_model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.system": deployment.config.provider.value,
                "gen_ai.request.model": deployment.config.upstream_model,
                "faregate.model": deployment.name,
            },
        )
        return UpstreamAttempt(span)

    def http_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """aiohttp hooks that put the current trace context on upstream requests."""
        if self._tracer is None:
            return []
        config = aiohttp.TraceConfig()
        config.on_request_start.append(_inject_trace_context)
        return [config]


class _Observing:
    """One RPC's observation, for a `with` block; see `Telemetry.observe`."""

    __slots__ = ("_observation", "_span_token", "_telemetry")

    def __init__(
        self, telemetry: Telemetry, observation: RequestObservation, span_token: object
    ) -> None:
        self._telemetry = telemetry
        self._observation = observation
        self._span_token = span_token

    def __enter__(self) -> RpcObserver:
        return self._observation

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._telemetry._end(self._observation, self._span_token, exc)


_NOT_OBSERVING: AbstractContextManager[RpcObserver] = nullcontext(NOT_OBSERVED)


NO_TELEMETRY = Telemetry(TelemetryConfig(http_listen="", metrics=False, request_log=False))
"""Observes nothing: for parts built outside a server (benches, unit tests)."""


class UpstreamAttempt:
    """One upstream attempt's span; `activate` while the request is sent."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def activate(self) -> object:
        """Makes the span current (so the HTTP request carries it); returns a token."""
        if self._span is None:
            return None
        return otel_context.attach(trace.set_span_in_context(self._span))

    def deactivate(self, token: object) -> None:
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]

    def succeeded(self, usage: ReportedUsage) -> None:
        span = self._span
        if span is None:
            return
        if isinstance(usage, ImplausibleUsage):
            span.set_attributes(
                {"http.response.status_code": 200, "faregate.usage_flaw": usage.flaw.value}
            )
        elif usage is None:
            span.set_attribute("http.response.status_code", 200)
        else:
            attributes: dict[str, AttributeValue] = {
                "http.response.status_code": 200,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
            }
            _add_usage_parts(attributes, usage)
            span.set_attributes(attributes)
        span.end()

    def failed(self, error: UpstreamError) -> None:
        span = self._span
        if span is None:
            return
        if error.http_status is not None:
            span.set_attribute("http.response.status_code", error.http_status)
        span.set_attribute("error.type", error.kind.value)
        span.set_status(Status(StatusCode.ERROR, error.message))
        span.end()

    def abandoned(self) -> None:
        """Ended without a verdict: a lost hedge, a caller gone."""
        span = self._span
        if span is None:
            return
        span.set_attribute("faregate.abandoned", True)
        span.end()


_NO_ATTEMPT = UpstreamAttempt(None)


class _LeafSpan:
    """Ends a span with its block, marking it failed on an exception.

    For spans with no children: it never becomes the current span, which
    spares the context attach and detach (and the SDK's generator-based
    context manager) that `start_as_current_span` costs.
    """

    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Span:
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self._span.end()


async def _inject_trace_context(
    session: aiohttp.ClientSession,
    trace_config_ctx: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    _PROPAGATOR.inject(params.headers)


def _end_server_span(span: Span, observation: RequestObservation) -> None:
    # One set_attributes call: the SDK takes a lock per call.
    attributes: dict[str, AttributeValue] = {
        "rpc.grpc.status_code": grpc.StatusCode[observation.code].value[0],
        "gen_ai.usage.input_tokens": observation.input_tokens,
        "gen_ai.usage.output_tokens": observation.output_tokens,
        "faregate.cost_nano_usd": observation.cost_nano_usd,
    }
    if observation.usage is not None:
        _add_usage_parts(attributes, observation.usage)
    if observation.model:
        attributes["faregate.model"] = observation.model
    call = observation.call
    if call is not None:
        attributes["faregate.budget_keys"] = call.budget_keys
        if call.agent:
            attributes["faregate.agent"] = call.agent
        if call.principal:
            attributes["faregate.principal"] = call.principal
    span.set_attributes(attributes)
    if observation.code != "OK":
        span.set_status(Status(StatusCode.ERROR, observation.reason or observation.code))
    span.end()


def _is_cancellation(error: BaseException) -> bool:
    return isinstance(error, asyncio.CancelledError)


def _otlp_tracer_provider(config: TelemetryConfig) -> TracerProvider:
    # Imported here: the exporter (and its gRPC channel) only when tracing is on.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME, "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(config.trace_sample_ratio)),
    )
    exporter = OTLPSpanExporter(
        endpoint=config.otlp_endpoint, insecure=config.otlp_endpoint.startswith("http://")
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _add_usage_parts(attributes: dict[str, AttributeValue], usage: Usage) -> None:
    """The usage's cache and reasoning counts, where it has them: under the
    GenAI semantic conventions' names for the cache (each a part of
    gen_ai.usage.input_tokens, as faregate counts them) and faregate's own
    for the hour's writes and reasoning (parts of the writes and the output)."""
    if usage.cached_input_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
    if usage.cache_write_input_tokens:
        attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_input_tokens
    if usage.cache_write_1h_input_tokens:
        attributes["faregate.usage.cache_write_1h_input_tokens"] = usage.cache_write_1h_input_tokens
    if usage.reasoning_tokens:
        attributes["faregate.usage.reasoning_tokens"] = usage.reasoning_tokens
