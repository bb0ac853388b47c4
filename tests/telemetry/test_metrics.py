"""GatewayMetrics on its own: how attempt records become retry, fallback and
hedge counts, how charged tokens are counted by the kinds priced apart, and
that counters report their in-process totals on collection."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from faregate_server.domain import AttemptOutcome, AttemptRecord, Usage
from faregate_server.telemetry.metrics import GatewayMetrics
from faregate_server.telemetry.request_observation import RequestObservation
from faregate_server.upstream.catalog import Catalog
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

FAILED, SUCCEEDED, CANCELLED = (
    AttemptOutcome.FAILED,
    AttemptOutcome.SUCCEEDED,
    AttemptOutcome.CANCELLED,
)


def _counts(reader: InMemoryMetricReader, name: str) -> dict[tuple[str, ...], int | float]:
    data = reader.get_metrics_data()
    assert data is not None
    counts: dict[tuple[str, ...], int | float] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    counts[tuple(str(value) for value in (point.attributes or {}).values())] = (
                        point.value
                    )
    return counts


def test_attempts_are_counted_as_first_retry_fallback_and_hedge() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    no_models = cast(Catalog, SimpleNamespace(deployments={}))  # no pools or breakers to observe
    metrics = GatewayMetrics(provider, lambda: no_models, budget_labels=False)
    observation = RequestObservation("Route", None, perf_s=lambda: 0.0)
    observation.records = [
        AttemptRecord("a", FAILED, 0.1, 0),
        AttemptRecord("a", FAILED, 0.1, 0),  # the same model again: a retry
        AttemptRecord("b", CANCELLED, 0.1, 0),  # another model: a fallback
        AttemptRecord("c", SUCCEEDED, 0.1, 0, hedge=True),
    ]

    metrics.record_request(observation, 0.5)
    metrics.record_request(observation, 0.5)

    assert _counts(reader, "faregate.attempts") == {
        ("a", "first", "failed"): 2,
        ("a", "retry", "failed"): 2,
        ("b", "fallback", "cancelled"): 2,
        ("c", "hedge", "succeeded"): 2,
    }
    assert _counts(reader, "faregate.requests") == {("Route", "", "", "", "OK"): 2}
    provider.shutdown()


def test_an_rpc_is_timed_on_the_injected_stopwatch() -> None:
    readings = iter([5.0, 5.000_3])
    observation = RequestObservation("Route", None, perf_s=lambda: next(readings))

    assert observation.elapsed_s() == pytest.approx(0.000_3)


def test_tokens_are_counted_by_the_kinds_priced_apart() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    no_models = cast(Catalog, SimpleNamespace(deployments={}))
    metrics = GatewayMetrics(provider, lambda: no_models, budget_labels=False)
    plain = RequestObservation("Route", None, perf_s=lambda: 0.0)
    plain.settled(Usage(50, 7), 10)
    cached = RequestObservation("Route", None, perf_s=lambda: 0.0)
    cached.settled(Usage(32_010, 40, 30_000, 2_000, 500, reasoning_tokens=30), 20)
    for observation in (plain, cached):
        observation.route = observation.model = "m"
        observation.provider = "anthropic"

    metrics.record_request(plain, 0.5)
    metrics.record_request(cached, 0.5)

    tokens = _counts(reader, "faregate.tokens")
    assert tokens == {
        ("m", "m", "anthropic", "input", "uncached"): 50 + 10,
        ("m", "m", "anthropic", "input", "cache_read"): 30_000,
        ("m", "m", "anthropic", "input", "cache_write"): 1_500,
        ("m", "m", "anthropic", "input", "cache_write_1h"): 500,
        ("m", "m", "anthropic", "output", "answer"): 7 + 10,
        ("m", "m", "anthropic", "output", "reasoning"): 30,
    }
    # A direction's kinds add up to it.
    assert sum(v for k, v in tokens.items() if k[3] == "input") == 50 + 32_010
    assert sum(v for k, v in tokens.items() if k[3] == "output") == 7 + 40
    assert _counts(reader, "faregate.cost.nano_usd") == {("m", "m", "anthropic"): 30}
    provider.shutdown()
