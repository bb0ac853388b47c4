"""Admission control: how fast faregate says "no" when it is past what it can serve.

Two overloads, each against a fresh `faregate serve` pinned to the server core
(the fake upstream and the load share the other), auth on as in production:

- 10x overload: `server.max_concurrent_calls` is `CAP`, and 10 x `CAP`
  concurrent Route calls go to a model whose upstream holds each for
  `HELD_DELAY_S`: `CAP` are served, the rest must be refused at once with
  UNAVAILABLE (SERVER_OVERLOADED, guard concurrency);
- past CPU saturation, on the default admission settings: streams are
  opened at once (`SATURATIONS`), each relaying tokens the upstream sends as
  fast as it can, which is more
  than one core keeps up with; once faregate's loop lags past
  `server.loop_lag_limit_s`, `PROBES` new Route calls come from a process of
  their own. The loop-lag guard must refuse them at once rather than leave
  them waiting.

Before admission control, the second case left 509 of the new calls waiting
until their 30 s deadline (CANCELLED), with no status, log line or metric.

Figures: outcomes by code and reason; the server-side time of a refusal, from
the request log's `latency_ms` (from the moment faregate's handler has the
call to its status being sent); the same refusals as their callers timed
them (which adds the time a call waits in gRPC for the loop to pick it up),
and the calls served; refusals by guard from /metrics; the highest loop lag
and calls in flight the gauges showed; the cores used on each side.

Run alone with `python -m bench.admission`; `make bench` runs it last.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from faregate_server.config.schema import ServerConfig

from bench.faregate_config import bench_config
from bench.load import percentile
from bench.overload import (
    AdmissionResult,
    measure_concurrency_overload,
    measure_saturation,
)
from bench.procs import Child, Children, pin
from bench.report import align
from bench.upstream import HELD_DELAY_S, HELD_MODEL

CAP = 100
DEFAULTS = ServerConfig()
LAG_LIMIT_S = DEFAULTS.loop_lag_limit_s
SATURATIONS = ((2000, 256), (300, 1024))
"""(streams, tokens each): the issue's 2,000 streams at once, most of which
gRPC itself keeps waiting; and fewer, longer ones, all admitted, that keep
the core saturated for longer than the new calls take to arrive."""
PROBES = 500
CLIENTS = 8
"""Channels the load is spread over (one client reading 2,000 streams would
be the bottleneck before faregate is)."""


def _faregate_command() -> list[str]:
    script = Path(sys.executable).with_name("faregate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "faregate_server"]


def admission_config(api_base: str, max_concurrent_calls: int | None = None) -> dict[str, Any]:
    """The bench config, plus a model the upstream holds, pools that never
    saturate, the default loop-lag guard, and the given cap (None: the default)."""
    config = bench_config(api_base)
    config["server"]["loop_lag_limit_s"] = LAG_LIMIT_S
    if max_concurrent_calls is not None:
        config["server"]["max_concurrent_calls"] = max_concurrent_calls
    bench = config["models"]["bench"]
    bench.update(workers=4 * max(streams for streams, _ in SATURATIONS), queue=0)
    config["models"][HELD_MODEL] = {**bench, "workers": 10 * CAP}
    config["auth"]["principals"]["bench"]["models"].append(HELD_MODEL)
    return config


def _start_faregate(
    children: Children, scratch: Path, name: str, config: dict[str, Any], cpu: int
) -> Child:
    path = scratch / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return children.start(
        name,
        [
            *_faregate_command(),
            "serve",
            "--config",
            str(path),
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        {cpu},
    )


def measure(server_cpu: int, load_cpu: int) -> list[AdmissionResult]:
    """Starts the upstream and one faregate per overload, and measures each."""
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="faregate-admission-") as scratch_name,
        Children(Path(scratch_name)) as children,
    ):
        scratch = Path(scratch_name)
        upstream = children.start("upstream", [sys.executable, "-m", "bench.upstream"], {load_cpu})
        api_base = f"http://{upstream.target}/v1"
        capped = _start_faregate(
            children, scratch, "faregate-capped", admission_config(api_base, CAP), server_cpu
        )
        _progress(f"admission: {10 * CAP} calls at a cap of {CAP}")
        results.append(asyncio.run(measure_concurrency_overload(capped, upstream, CAP, HELD_MODEL)))
        for streams, tokens in SATURATIONS:
            name = f"faregate-saturated-{streams}"
            saturated = _start_faregate(
                children, scratch, name, admission_config(api_base), server_cpu
            )
            _progress(f"admission: {streams} streams of {tokens} tokens, then {PROBES} calls")
            results.append(
                asyncio.run(
                    measure_saturation(
                        saturated, upstream, streams, tokens, PROBES, CLIENTS, LAG_LIMIT_S
                    )
                )
            )
    return results


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _ms(values_s: Sequence[float], fraction: float) -> str:
    return f"{percentile(values_s, fraction) * 1000:.1f}" if values_s else "-"


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{outcome} {count}" for outcome, count in sorted(counts.items())) or "-"


def render(results: Sequence[AdmissionResult]) -> str:
    lines = [
        "Admission control (SERVER_OVERLOADED): refusal time under overload",
        f"  (the held model's upstream answers after {HELD_DELAY_S:.0f} s; before admission"
        " control, 509 new calls past CPU saturation waited 30 s and were CANCELLED)",
    ]
    for result in results:
        server_s = [ms / 1000 for ms in result.server_rejection_ms]
        client_s = result.client_rejection_s
        lines.append(f"  {result.label}")
        if result.streams:
            lines.append(f"    streams: {_outcomes(result.streams)}")
        lines.append(f"    calls:   {_outcomes(result.calls)}")
        lines.append(
            f"    refused by guard: {_outcomes(result.refused_by_guard)};"
            f" highest loop lag seen {result.max_loop_lag_s * 1000:.0f} ms,"
            f" calls in flight {result.max_in_flight};"
            f" cores used: faregate {result.server_cores:.2f},"
            f" load and upstream {result.load_cores:.2f}"
        )
        lines.extend(
            "    " + row
            for row in align(
                [
                    ("refusal time (ms)", "p50", "p99", "max", "n"),
                    (
                        "server (request log)",
                        _ms(server_s, 0.5),
                        _ms(server_s, 0.99),
                        _ms(server_s, 1.0),
                        str(len(server_s)),
                    ),
                    (
                        "caller",
                        _ms(client_s, 0.5),
                        _ms(client_s, 0.99),
                        _ms(client_s, 1.0),
                        str(len(client_s)),
                    ),
                    (
                        "(a served call, caller)",
                        _ms(result.client_served_s, 0.5),
                        _ms(result.client_served_s, 0.99),
                        _ms(result.client_served_s, 1.0),
                        str(len(result.client_served_s)),
                    ),
                ]
            )
        )
    return "\n".join(lines)


def main() -> int:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpu = cpus[0], cpus[-1]
    pin(os.getpid(), {load_cpu})
    print(render(measure(server_cpu, load_cpu)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
