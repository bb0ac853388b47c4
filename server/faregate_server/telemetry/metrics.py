"""faregate's metrics: what they are, and how one request feeds them.

Every label has a bounded set of values: configured route and model names
(never the caller's free text), provider kinds, gRPC status code names and
faregate's error reasons. Budget keys label the request and cost counters,
and get a remaining-money gauge each, only when `telemetry.budget_labels`
allows it: a deployment with a budget per user would otherwise grow a series
per user. Money is counted in integer nano-USD.

Instruments (Prometheus names in brackets):
- faregate.requests [faregate_requests_total]: RPCs by rpc, route, model,
  provider, outcome (the gRPC status code name);
- faregate_request_duration_seconds: RPC latency, by rpc, route, model and
  outcome; a histogram of faregate's own, on /metrics only (histograms.py);
- faregate_time_to_first_token_seconds: for StreamRoute, from the call to
  its first output, by route and model; likewise;
- faregate.tokens [faregate_tokens_total]: charged tokens, by direction
  (input, output) and kind, the parts of a direction that are priced
  apart: input is uncached, cache_read, cache_write (five-minute or of no
  stated lifetime) or cache_write_1h; output is answer or reasoning. The
  kinds of a direction add up to it, so `sum by (direction)` is every
  charged token;
- faregate.cost.nano_usd [faregate_cost_nano_usd_total]: charged money;
- faregate.rejections [faregate_rejections_total]: failed RPCs by reason;
- faregate.attempts [faregate_attempts_total]: upstream attempts by model,
  kind (first, retry, fallback, hedge) and outcome;
- faregate.implausible_usage [faregate_implausible_usage_total]: upstream
  answers whose reported usage was not believed (and was charged the
  reservation instead), by model and flaw (upstream/usage.py);
- faregate.overrun.requests [faregate_overrun_requests_total] and
  faregate.overrun.nano_usd [faregate_overrun_nano_usd_total]: requests
  charged past their reservation (a whole answer's believable report that
  cost more than its worst case, routing/settlement.py), and the money
  charged past it, by model;
- faregate.stream_cuts [faregate_stream_cuts_total]: streams cut when their
  delivered output reached their reserved output (an upstream that ignored
  the output cap), by model;
- faregate.pool.in_flight / faregate.pool.queue_depth: each model's worker
  pool, observed at collection;
- faregate.breaker.state: 0 closed, 1 half-open, 2 open, per model;
- faregate.budget.remaining.nano_usd [faregate_budget_remaining_nano_usd]: per budget,
  only with budget labels allowed;
- faregate.calls.in_flight [faregate_calls_in_flight]: Route and StreamRoute
  calls being served, against server.max_concurrent_calls;
- faregate.loop.lag [faregate_loop_lag_seconds]: how late the event loop
  woke the admission probe last;
- faregate.admission.refusals [faregate_admission_refusals_total]: calls
  refused SERVER_OVERLOADED, by guard (concurrency, loop_lag);
- faregate.request_log.dropped_lines
  [faregate_request_log_dropped_lines_total]: request log lines lost by the
  line writer (`faregate serve`'s, on stderr), by cause (refused: its buffer
  was full; failed: the write failed; unwritten: left when closing stopped
  waiting for a stalled reader), read from its statistics;
- faregate.budget.alerts [faregate_budget_alerts_total]: budget alerts raised,
  by budget and threshold (as configured, e.g. "0.8"). Budget keys label it
  whatever `budget_labels` says: only budgets an operator gave `alerts` have
  series, a few each;
- faregate.budget.alert_webhooks [faregate_budget_alert_webhooks_total]:
  alerts' webhook POSTs by outcome (delivered, failed: given up after its
  attempts, dropped: the queue was full), and
  faregate.budget.alert_webhook_retries
  [faregate_budget_alert_webhook_retries_total]: POSTs made again, both read
  from the alerter's statistics (budget_alerts.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from faregate_server import __version__
from faregate_server.config.schema import TelemetryConfig
from faregate_server.domain import AttemptRecord, Usage
from faregate_server.errors import FaregateError
from faregate_server.telemetry.histograms import Histograms, LatencyHistogram
from faregate_server.upstream.breakers import BreakerState

if TYPE_CHECKING:
    from faregate_server.rpc.admission import AdmissionStatistics
    from faregate_server.state.store import StateStore
    from faregate_server.telemetry.budget_alerts import AlertStatistics
    from faregate_server.telemetry.line_writer import LineWriterStatistics
    from faregate_server.telemetry.request_observation import RequestObservation
    from faregate_server.upstream.catalog import Catalog

logger = logging.getLogger(__name__)

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# How long a scrape waits for the budget gauges' reads.
_BUDGET_READ_TIMEOUT_S = 1.0
_BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class _Tally:
    """A cumulative counter kept in a dict keyed by label values.

    The OpenTelemetry SDK spends over ten microseconds cleaning and hashing the
    attributes of every synchronous `add`; a dict increment costs well under
    one. Requests add here, and an observable counter reports the totals when
    a reader collects, so the per-request cost of a counter is the increment.
    """

    __slots__ = ("_counts", "_names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._counts: dict[tuple[str, ...], int] = {}

    def add(self, key: tuple[str, ...], amount: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # list() copies in one step: a collection on another thread never
        # sees the dict change size under it.
        for key, total in list(self._counts.items()):
            yield Observation(total, dict(zip(self._names, key, strict=True)))


class GatewayMetrics:
    """The instruments, and the one call per request that records them."""

    def __init__(
        self,
        meter_provider: MeterProvider,
        catalog: Callable[[], Catalog],
        *,
        budget_labels: bool,
        admission: Callable[[], AdmissionStatistics] | None = None,
        request_log: Callable[[], LineWriterStatistics] | None = None,
        budget_alerts: Callable[[], AlertStatistics] | None = None,
    ) -> None:
        """`catalog` returns the current catalog (a reload replaces it);
        `admission` the admission guards' statistics, when there are any;
        `request_log` the request log's line writer's, when it has one;
        `budget_alerts` the budget alerter's."""
        meter = meter_provider.get_meter("faregate_server", __version__)
        self._catalog = catalog
        self._budget_labels = budget_labels
        self._remaining: dict[str, int] = {}
        budget = ("budget",) if budget_labels else ()
        self._requests = _Tally(("rpc", "route", "model", "provider", "outcome", *budget))
        self._tokens = _Tally(("route", "model", "provider", "direction", "kind", *budget))
        self._cost = _Tally(("route", "model", "provider", *budget))
        self._rejections = _Tally(("rpc", "reason"))
        self._attempts = _Tally(("model", "kind", "outcome"))
        self._implausible = _Tally(("model", "flaw"))
        self._overruns = _Tally(("model",))
        self._overrun_nano_usd = _Tally(("model",))
        self._stream_cuts = _Tally(("model",))
        for name, tally, unit, description in (
            ("faregate.requests", self._requests, "{request}", "RPCs served, by outcome"),
            (
                "faregate.tokens",
                self._tokens,
                "{token}",
                "Tokens charged, by direction and kind",
            ),
            ("faregate.cost.nano_usd", self._cost, "", "Money charged, in nano-USD"),
            ("faregate.rejections", self._rejections, "{request}", "Failed RPCs, by reason"),
            (
                "faregate.attempts",
                self._attempts,
                "{attempt}",
                "Upstream attempts, by kind (first, retry, fallback, hedge)",
            ),
            (
                "faregate.implausible_usage",
                self._implausible,
                "{answer}",
                "Upstream answers whose reported usage was not believed, by flaw",
            ),
            (
                "faregate.overrun.requests",
                self._overruns,
                "{request}",
                "Requests charged past their reservation, by model",
            ),
            (
                "faregate.overrun.nano_usd",
                self._overrun_nano_usd,
                "",
                "Money charged past reservations, in nano-USD, by model",
            ),
            (
                "faregate.stream_cuts",
                self._stream_cuts,
                "{stream}",
                "Streams cut when their delivered output reached their reserved output",
            ),
        ):
            meter.create_observable_counter(
                name, callbacks=[tally.observe], unit=unit, description=description
            )
        self._duration = LatencyHistogram(
            "faregate_request_duration_seconds",
            "RPC latency, from the call to its last message",
            ("rpc", "route", "model", "outcome"),
            _SECONDS_BUCKETS,
        )
        self._ttft = LatencyHistogram(
            "faregate_time_to_first_token_seconds",
            "StreamRoute: from the call to the first output",
            ("route", "model"),
            _SECONDS_BUCKETS,
        )
        self.histograms = Histograms((self._duration, self._ttft))
        """The latency histograms, for the Prometheus registry (histograms.py)."""
        meter.create_observable_gauge(
            "faregate.pool.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{request}",
            description="Upstream calls holding a worker slot, per model",
        )
        meter.create_observable_gauge(
            "faregate.pool.queue_depth",
            callbacks=[self._observe_queue_depth],
            unit="{request}",
            description="Requests waiting for a worker slot, per model",
        )
        meter.create_observable_gauge(
            "faregate.breaker.state",
            callbacks=[self._observe_breakers],
            description="Circuit breaker per model: 0 closed, 1 half-open, 2 open",
        )
        if admission is not None:
            self._admission = admission
            meter.create_observable_gauge(
                "faregate.calls.in_flight",
                callbacks=[self._observe_calls_in_flight],
                unit="{call}",
                description="Route and StreamRoute calls being served",
            )
            meter.create_observable_gauge(
                "faregate.loop.lag",
                callbacks=[self._observe_loop_lag],
                unit="s",
                description="How late the event loop woke the admission probe last",
            )
            meter.create_observable_counter(
                "faregate.admission.refusals",
                callbacks=[self._observe_refusals],
                unit="{call}",
                description="Calls refused SERVER_OVERLOADED, by guard",
            )
        if request_log is not None:
            self._request_log = request_log
            meter.create_observable_counter(
                "faregate.request_log.dropped_lines",
                callbacks=[self._observe_request_log_drops],
                unit="{line}",
                description="Request log lines lost, by cause (refused, failed, unwritten)",
            )
        if budget_alerts is not None:
            self._budget_alerts = budget_alerts
            for name, callback, unit, description in (
                (
                    "faregate.budget.alerts",
                    self._observe_budget_alerts,
                    "{alert}",
                    "Budget alerts raised, by budget and threshold",
                ),
                (
                    "faregate.budget.alert_webhooks",
                    self._observe_alert_webhooks,
                    "{alert}",
                    "Budget alerts' webhook POSTs, by outcome (delivered, failed, dropped)",
                ),
                (
                    "faregate.budget.alert_webhook_retries",
                    self._observe_alert_webhook_retries,
                    "{request}",
                    "Budget alert webhook POSTs made again after a failed one",
                ),
            ):
                meter.create_observable_counter(
                    name, callbacks=[callback], unit=unit, description=description
                )
        if budget_labels:
            meter.create_observable_gauge(
                "faregate.budget.remaining.nano_usd",
                callbacks=[self._observe_budgets],
                description="Money left in each budget (limit - spent - reserved), in nano-USD",
            )

    def record_request(self, observation: RequestObservation, latency_s: float) -> None:
        route, model, provider = observation.route, observation.model, observation.provider
        budget: tuple[str, ...] = ()
        if self._budget_labels:
            # Only configured keys: a caller's made-up key must not become a series.
            call = observation.call
            known = call is not None and call.budget_key in self._catalog().config.budgets
            budget = (call.budget_key if call is not None and known else "",)
        self._requests.add((observation.method, route, model, provider, observation.code, *budget))
        self._duration.observe((observation.method, route, model, observation.code), latency_s)
        if observation.first_output_s is not None:
            self._ttft.observe((route, model), observation.first_output_s)
        if observation.code != "OK":
            self._rejections.add((observation.method, observation.reason or observation.code))
        if observation.input_tokens or observation.output_tokens:
            self._cost.add((route, model, provider, *budget), observation.cost_nano_usd)
            usage = observation.usage
            if usage is None or not (
                usage.cached_input_tokens
                or usage.cache_write_input_tokens
                or usage.reasoning_tokens
            ):
                tokens = self._tokens
                tokens.add(
                    (route, model, provider, "input", "uncached", *budget), observation.input_tokens
                )
                tokens.add(
                    (route, model, provider, "output", "answer", *budget), observation.output_tokens
                )
            else:
                self._record_token_parts((route, model, provider), budget, usage)
        if observation.records:
            self._record_attempts(observation.records)

    def _record_token_parts(
        self, served: tuple[str, str, str], budget: tuple[str, ...], usage: Usage
    ) -> None:
        """A usage's tokens by the kinds priced apart; a kind it has none of adds nothing."""
        written_1h = usage.cache_write_1h_input_tokens
        written = usage.cache_write_input_tokens
        cached = usage.cached_input_tokens
        for direction, kind, count in (
            ("input", "uncached", usage.input_tokens - cached - written),
            ("input", "cache_read", cached),
            ("input", "cache_write", written - written_1h),
            ("input", "cache_write_1h", written_1h),
            ("output", "answer", usage.output_tokens - usage.reasoning_tokens),
            ("output", "reasoning", usage.reasoning_tokens),
        ):
            if count:
                self._tokens.add((*served, direction, kind, *budget), count)

    def count_implausible_usage(self, model: str, flaw: str) -> None:
        """One upstream answer of `model` (a configured name) with unbelievable usage."""
        self._implausible.add((model, flaw))

    def count_overrun(self, model: str, overrun_nano_usd: int) -> None:
        """One request of `model` charged `overrun_nano_usd` past its reservation."""
        self._overruns.add((model,))
        self._overrun_nano_usd.add((model,), overrun_nano_usd)

    def count_stream_cut(self, model: str) -> None:
        """One stream of `model` cut at its reserved output."""
        self._stream_cuts.add((model,))

    def _record_attempts(self, records: Sequence[AttemptRecord]) -> None:
        previous = ""
        for record in records:
            if record.hedge:
                kind = "hedge"
            elif not previous:
                kind = "first"
            elif record.model == previous:
                kind = "retry"
            else:
                kind = "fallback"
            if not record.hedge:
                previous = record.model
            self._attempts.add((record.model, kind, record.outcome.value))

    async def refresh_budgets(self, state: StateStore) -> None:
        """Reads each configured budget's remaining money for the next collection.

        The store is asynchronous and collection callbacks are not, so the
        scrape handler awaits this first.
        """
        if not self._budget_labels:
            return
        keys = list(self._catalog().config.budgets)
        try:
            async with asyncio.timeout(_BUDGET_READ_TIMEOUT_S):
                snapshots = await asyncio.gather(*(state.budget(key) for key in keys))
        except (TimeoutError, FaregateError):
            # A slow or unreachable store must not fail the scrape: the gauge
            # keeps its last values, and /readyz reports the store.
            logger.warning("budget gauges not refreshed: the state store did not answer")
            return
        self._remaining = {
            key: snapshot.remaining_nano_usd for key, snapshot in zip(keys, snapshots, strict=True)
        }

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, deployment in self._catalog().deployments.items():
            yield Observation(deployment.pool.statistics().in_use, {"model": name})

    def _observe_queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, deployment in self._catalog().deployments.items():
            yield Observation(deployment.pool.statistics().waiting, {"model": name})

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, deployment in self._catalog().deployments.items():
            yield Observation(_BREAKER_VALUES[deployment.breaker.state], {"model": name})

    def _observe_calls_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._admission().in_flight)

    def _observe_loop_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._admission().loop_lag_s)

    def _observe_refusals(self, options: CallbackOptions) -> Iterable[Observation]:
        statistics = self._admission()
        yield Observation(statistics.refused_concurrency, {"guard": "concurrency"})
        yield Observation(statistics.refused_loop_lag, {"guard": "loop_lag"})

    def _observe_request_log_drops(self, options: CallbackOptions) -> Iterable[Observation]:
        statistics = self._request_log()
        yield Observation(statistics.refused_lines, {"cause": "refused"})
        yield Observation(statistics.failed_lines, {"cause": "failed"})
        yield Observation(statistics.unwritten_lines, {"cause": "unwritten"})

    def _observe_budget_alerts(self, options: CallbackOptions) -> Iterable[Observation]:
        for budget, threshold, count in self._budget_alerts().raised:
            yield Observation(count, {"budget": budget, "threshold": threshold})

    def _observe_alert_webhooks(self, options: CallbackOptions) -> Iterable[Observation]:
        statistics = self._budget_alerts()
        yield Observation(statistics.delivered, {"outcome": "delivered"})
        yield Observation(statistics.failed, {"outcome": "failed"})
        yield Observation(statistics.dropped, {"outcome": "dropped"})

    def _observe_alert_webhook_retries(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._budget_alerts().retries)

    def _observe_budgets(self, options: CallbackOptions) -> Iterable[Observation]:
        for key, remaining_nano_usd in self._remaining.items():
            yield Observation(remaining_nano_usd, {"budget": key})


def open_metrics(
    config: TelemetryConfig,
    meter_provider: MeterProvider | None,
    catalog: Callable[[], Catalog],
    admission: Callable[[], AdmissionStatistics] | None = None,
    request_log: Callable[[], LineWriterStatistics] | None = None,
    budget_alerts: Callable[[], AlertStatistics] | None = None,
) -> tuple[GatewayMetrics | None, CollectorRegistry | None, SdkMeterProvider | None]:
    """The metrics for a server, the Prometheus registry that /metrics renders,
    and the meter provider to shut down (None when it was handed in);
    `admission`, `request_log` and `budget_alerts` as for `GatewayMetrics`.

    The registry always holds the latency histograms (histograms.py); the
    OpenTelemetry instruments join them there through a Prometheus reader
    when the meter provider is this server's own. One handed in (as tests
    do, with an in-memory reader) exports those instruments its own way."""
    if not config.metrics:
        return None, None, None
    registry = CollectorRegistry()
    owned = None
    if meter_provider is None:
        reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
        meter_provider = owned = SdkMeterProvider(
            metric_readers=[reader],
            # Exemplars need traces and cost a lookup per measurement.
            exemplar_filter=AlwaysOffExemplarFilter(),
            resource=Resource.create({"service.name": "faregate", "service.version": __version__}),
            shutdown_on_exit=False,
        )
    metrics = GatewayMetrics(
        meter_provider,
        catalog,
        budget_labels=config.budget_labels,
        admission=admission,
        request_log=request_log,
        budget_alerts=budget_alerts,
    )
    registry.register(metrics.histograms)
    return metrics, registry, owned
