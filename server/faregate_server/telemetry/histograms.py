"""Latency histograms kept by faregate itself and rendered at /metrics.

OpenTelemetry's SDK spends about 20 µs on every `Histogram.record`
(attribute hashing, a lock, its measurement pipeline), and an RPC records
one or two: a tenth of what a whole Route costs faregate's event loop. A
`LatencyHistogram` takes an observation as one dict lookup, a bisect and two
additions. `Histograms` renders them for a prometheus_client registry in the
shape OpenTelemetry's Prometheus exporter gives a histogram:
`<name>_bucket{…,le="…"}` (cumulative), `<name>_sum` and `<name>_count`.

Observations are made on the event loop's thread; a collection copies each
histogram's series in one step first, so a collection on another thread
never sees a dict change size under it (a series it copies mid-update may
be one observation behind, never torn worse).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class LatencyHistogram:
    """Seconds, counted into fixed buckets per combination of label values."""

    __slots__ = ("_bounds", "_les", "_series", "documentation", "labels", "name")

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], bounds_s: Sequence[float]
    ) -> None:
        """`name` as Prometheus shows it (`faregate_request_duration_seconds`);
        `bounds_s` the buckets' upper bounds, ascending (a last, unbounded
        bucket is implied)."""
        if list(bounds_s) != sorted(set(bounds_s)):
            raise ValueError(f"{name}: bucket bounds must ascend, each once")
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self._bounds = tuple(bounds_s)
        # Spelled as OpenTelemetry's exporter spells them: "0.005", "1.0", "+Inf".
        self._les = (*(f"{float(bound)}" for bound in bounds_s), "+Inf")
        self._series: dict[tuple[str, ...], list[float]] = {}
        """Label values -> [sum, count of bucket 0, …, count of the last bucket]."""

    def observe(self, key: tuple[str, ...], value_s: float) -> None:
        """Counts `value_s` for the label values `key` (in `labels` order)."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0] * (len(self._bounds) + 2)
        series[0] += value_s
        series[bisect_left(self._bounds, value_s) + 1] += 1

    def snapshot(self) -> dict[tuple[str, ...], tuple[float, tuple[int, ...]]]:
        """Label values -> (sum of the values, count per bucket, not cumulative)."""
        return {
            key: (series[0], tuple(int(count) for count in series[1:]))
            for key, series in list(self._series.items())
        }

    def family(self) -> HistogramMetricFamily:
        """The histogram as prometheus_client renders one."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, (total_s, counts) in self.snapshot().items():
            cumulative = 0
            buckets = []
            for le, count in zip(self._les, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(list(key), buckets, total_s)
        return family


class Histograms(Collector):
    """A prometheus_client collector of faregate's own histograms."""

    def __init__(self, histograms: Iterable[LatencyHistogram]) -> None:
        self._histograms = tuple(histograms)

    def collect(self) -> Iterable[Metric]:
        for histogram in self._histograms:
            yield histogram.family()

    def describe(self) -> Iterable[Metric]:
        # The names, for the registry's check against duplicates.
        for histogram in self._histograms:
            yield HistogramMetricFamily(histogram.name, histogram.documentation)
