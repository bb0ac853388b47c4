"""faregate's own latency histograms: bucketing, and their Prometheus rendering."""

from __future__ import annotations

import pytest
from faregate_server.telemetry.histograms import Histograms, LatencyHistogram
from prometheus_client import CollectorRegistry, generate_latest


def _histogram() -> LatencyHistogram:
    return LatencyHistogram("t_seconds", "A test latency", ("rpc", "model"), (0.01, 0.1, 1.0))


def test_a_value_counts_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    histogram = _histogram()
    for value_s in (0.005, 0.01, 0.05, 1.0, 7.0):
        histogram.observe(("Route", "m"), value_s)

    ((key, (total_s, counts)),) = histogram.snapshot().items()

    assert key == ("Route", "m")
    assert counts == (2, 1, 1, 1)  # <= 0.01, <= 0.1, <= 1.0, and over the last bound
    assert total_s == pytest.approx(8.065)


def test_each_combination_of_label_values_is_a_series_of_its_own() -> None:
    histogram = _histogram()
    histogram.observe(("Route", "a"), 0.5)
    histogram.observe(("StreamRoute", "a"), 0.5)
    histogram.observe(("Route", "a"), 0.5)

    counts = {key: sum(series[1]) for key, series in histogram.snapshot().items()}

    assert counts == {("Route", "a"): 2, ("StreamRoute", "a"): 1}


def test_rendered_buckets_are_cumulative_as_prometheus_reads_them() -> None:
    histogram = _histogram()
    for value_s in (0.005, 0.05, 0.05, 3.0):
        histogram.observe(("Route", "m"), value_s)
    registry = CollectorRegistry()
    registry.register(Histograms([histogram]))

    lines = generate_latest(registry).decode().splitlines()

    labels = 'model="m",rpc="Route"'
    for le, count in (("0.01", 1), ("0.1", 3), ("1.0", 3), ("+Inf", 4)):
        assert f't_seconds_bucket{{le="{le}",{labels}}} {float(count)}' in lines
    assert f"t_seconds_count{{{labels}}} 4.0" in lines
    assert f"t_seconds_sum{{{labels}}} 3.105" in lines
    assert "# TYPE t_seconds histogram" in lines


def test_a_registry_refuses_a_second_histogram_of_the_same_name() -> None:
    registry = CollectorRegistry()
    registry.register(Histograms([_histogram()]))

    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(Histograms([_histogram()]))


@pytest.mark.parametrize("bounds_s", [(0.1, 0.01), (0.1, 0.1)])
def test_bucket_bounds_must_ascend_each_once(bounds_s: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="must ascend"):
        LatencyHistogram("t_seconds", "A test latency", ("rpc",), bounds_s)
