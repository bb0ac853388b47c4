"""Telemetry's price: faregate's CPU per request with each level of telemetry.

Four faregate processes on the bench config (`faregate_config.py`, written
by this process so the API key it calls with matches), each
`python -m bench.telemetry serve MODE CONFIG`, pinned to the server
core, the fake upstream and this load generator sharing the other:

- off: no metrics, no request log, no tracing, no HTTP port; each RPC's
  observation is a shared no-op;
- metrics: OpenTelemetry metrics with the Prometheus reader (never scraped
  here: collection costs only on scrape);
- default: what faregate ships with: metrics plus one JSON request log line
  per request, written to the process's log file;
- traces: the default plus tracing, every span sampled, through the SDK's
  BatchSpanProcessor to an exporter that drops what it is handed (so the cost
  is faregate's spans and the SDK's processing, not a network).

Each round runs, against every mode in turn (the order rotating between
rounds), a closed loop of unary Route calls at concurrency 16 and then of
StreamRoute calls of 256 tokens at concurrency 4. The figure is the server
process's own CPU time (utime + stime over all its threads, from /proc) over
the batch, divided by the requests; each mode's figure is the median over
rounds, and its ratio to "off" the median of the per-round ratios.

Beside it, in this process: what the tracing hooks on a Route's path cost
with tracing off (two span contexts, an attempt's five calls, the observe
hooks), timed over many repetitions: the price every request pays for
tracing being possible.

Run alone with `python -m bench.telemetry`; `make bench` runs it last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import yaml
from faregate_server.app import serve
from faregate_server.config.load import parse_config
from faregate_server.domain import Usage
from faregate_server.telemetry.observation import NO_TELEMETRY
from faregate_server.telemetry.request_observation import NOT_OBSERVED
from faregate_server.upstream.catalog import Deployment
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.faregate_config import write_bench_config
from bench.load import Call, GrpcTarget, closed_loop
from bench.procs import Children, cpu_time_s, log_tail, pin
from bench.report import align

MODES = ("off", "metrics", "default", "traces")
ROUNDS = 5
UNARY_CALLS = 2000
UNARY_CONCURRENCY = 16
STREAM_CALLS = 40
STREAM_CONCURRENCY = 4
WARM_UP_CALLS = 300
MAX_PHASE_S = 60.0

_TELEMETRY = {
    "off": {"http_listen": "", "metrics": False, "request_log": False},
    "metrics": {"http_listen": "127.0.0.1:0", "metrics": True, "request_log": False},
    "default": {"http_listen": "127.0.0.1:0"},
    "traces": {"http_listen": "127.0.0.1:0"},
}


@dataclass(frozen=True, slots=True)
class ModeResult:
    mode: str
    unary_cpu_us: list[float]
    """Per round: server CPU per unary Route, in microseconds."""
    stream_cpu_us: list[float]
    """Per round: server CPU per 256-token StreamRoute, in microseconds."""


class _DropSpans(SpanExporter):
    """Takes every batch and keeps nothing: export with no network."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _serve_child(mode: str, data: dict[str, Any]) -> None:
    data["telemetry"] = _TELEMETRY[mode]
    config = parse_config(yaml.safe_dump(data))
    tracer_provider = None
    if mode == "traces":
        tracer_provider = TracerProvider(shutdown_on_exit=False)
        tracer_provider.add_span_processor(BatchSpanProcessor(_DropSpans()))
    # As `faregate serve` does: request lines are bare JSON on stderr (the log file).
    logging.basicConfig(level=logging.INFO)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(
        config, tracer_provider=tracer_provider, request_log_fd=sys.stderr.fileno()
    ) as running:
        print(f"faregate-{mode} listening on 127.0.0.1:{running.port}", flush=True)
        await stop.wait()
    if tracer_provider is not None:
        tracer_provider.shutdown()


async def _cpu_per_call_us(pid: int, call: Call, *, concurrency: int, calls: int) -> float:
    before_s = cpu_time_s(pid)
    result = await closed_loop(
        call,
        concurrency=concurrency,
        max_calls=calls,
        max_duration_s=MAX_PHASE_S,
    )
    used_s = cpu_time_s(pid) - before_s
    if result.failed:
        raise RuntimeError(f"{result.failed} calls failed; the first: {result.first_error}")
    return used_s / result.completed * 1e6


async def _measure(targets: dict[str, tuple[int, str]]) -> list[ModeResult]:
    channels = {mode: grpc.aio.insecure_channel(target) for mode, (_, target) in targets.items()}
    try:
        stubs = {mode: GrpcTarget(channel) for mode, channel in channels.items()}
        for mode, stub in stubs.items():
            _progress(f"warming up {mode}")
            await closed_loop(
                stub.route, concurrency=16, max_calls=WARM_UP_CALLS, max_duration_s=MAX_PHASE_S
            )
        unary: dict[str, list[float]] = {mode: [] for mode in MODES}
        stream: dict[str, list[float]] = {mode: [] for mode in MODES}
        for index in range(ROUNDS):
            order = MODES[index % len(MODES) :] + MODES[: index % len(MODES)]
            _progress(f"round {index + 1}/{ROUNDS} ({', '.join(order)})")
            for mode in order:
                pid = targets[mode][0]
                unary[mode].append(
                    await _cpu_per_call_us(
                        pid, stubs[mode].route, concurrency=UNARY_CONCURRENCY, calls=UNARY_CALLS
                    )
                )
                stream[mode].append(
                    await _cpu_per_call_us(
                        pid, stubs[mode].stream, concurrency=STREAM_CONCURRENCY, calls=STREAM_CALLS
                    )
                )
        return [ModeResult(mode, unary[mode], stream[mode]) for mode in MODES]
    finally:
        for channel in channels.values():
            await channel.close()


def measure() -> list[ModeResult]:
    """Starts the upstream and one faregate per mode, measures, stops them all."""
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpu = cpus[0], cpus[-1]
    pin(os.getpid(), {load_cpu})
    with (
        tempfile.TemporaryDirectory(prefix="faregate-bench-telemetry-") as scratch,
        Children(Path(scratch)) as children,
    ):
        upstream = children.start("upstream", [sys.executable, "-m", "bench.upstream"], {load_cpu})
        config = write_bench_config(Path(scratch) / "faregate.yaml", f"http://{upstream.target}/v1")
        targets = {}
        for mode in MODES:
            child = children.start(
                f"faregate-{mode}",
                [sys.executable, "-m", "bench.telemetry", "serve", mode, str(config)],
                {server_cpu},
            )
            targets[mode] = (child.pid, child.target)
        try:
            return asyncio.run(_measure(targets))
        except RuntimeError:
            for mode in MODES:
                print(log_tail(Path(scratch) / f"faregate-{mode}.log"), file=sys.stderr)
            raise


def hooks_off_ns(repetitions: int = 200_000) -> float:
    """Nanoseconds per Route spent in telemetry hooks with everything off."""
    telemetry = NO_TELEMETRY
    observation = NOT_OBSERVED
    usage = Usage(10, 5)
    started_ns = time.perf_counter_ns()
    for _ in range(repetitions):
        with telemetry.span("faregate.select"):
            pass
        with telemetry.span("faregate.budget.reserve", "model"):
            pass
        attempt = telemetry.attempt(cast(Deployment, None))
        active = attempt.activate()
        attempt.deactivate(active)
        attempt.succeeded(usage)
        observation.first_output()
        observation.settled(usage, 100)
    return (time.perf_counter_ns() - started_ns) / repetitions


def render(results: list[ModeResult], hooks_ns: float) -> str:
    off = next(result for result in results if result.mode == "off")
    rows = [("mode", "CPU/Route (us)", "ratio", "CPU/stream (us)", "ratio")]
    for result in results:
        rows.append(
            (
                result.mode,
                _median_range(result.unary_cpu_us),
                _ratio(result.unary_cpu_us, off.unary_cpu_us),
                _median_range(result.stream_cpu_us),
                _ratio(result.stream_cpu_us, off.stream_cpu_us),
            )
        )
    return "\n".join(
        [
            "",
            "## Telemetry's cost (server CPU per request; ratio to telemetry off)",
            "",
            f"{ROUNDS} rounds; Route x{UNARY_CALLS} at concurrency {UNARY_CONCURRENCY},"
            f" StreamRoute (256 tokens) x{STREAM_CALLS} at concurrency {STREAM_CONCURRENCY}.",
            "",
            *align(rows),
            "",
            f"Tracing hooks with tracing off: {hooks_ns:.0f} ns per Route (in-process).",
        ]
    )


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def _ratio(values: list[float], baseline: list[float]) -> str:
    ratios = [value / base for value, base in zip(values, baseline, strict=True)]
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def _progress(message: str) -> None:
    print(f"bench telemetry: {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        mode, config_path = argv[1:3]
        asyncio.run(_serve_child(mode, yaml.safe_load(Path(config_path).read_text())))
        return 0
    print(render(measure(), hooks_off_ns()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
