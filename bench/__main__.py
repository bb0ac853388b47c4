"""`python -m bench`: start the servers, run the rounds, print the report;
then the routing simulation, the hedging, state and telemetry measurements,
admission control under overload and what prompt caching saves, each printed
as it ends.

`python -m bench --tool-calls [--rounds N]` runs only the tool-call phase
(`rounds.measure_tool_calls`) on faregate and the pass-through, in N
interleaved rounds (default 2), and prints its rows: a quick look at what
tools cost without the whole bench.

See the package docstring for the method. Every child process is owned by a
`Children` context, so they are all stopped however the bench ends (an
error, Ctrl-C or SIGTERM). The bench exits 0 whether or not goals pass; it
exits non-zero only when it could not measure (a server failed to start, or
failed during warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import aiohttp
import grpc

from bench import (
    admission,
    hedging,
    prompt_cache,
    routing_report,
    routing_sim,
    state,
    telemetry,
)
from bench.faregate_config import sqlite_state, write_bench_config
from bench.load import DirectTarget, GrpcTarget, LoadResult, closed_loop
from bench.memory import exercise_default_config
from bench.overload import OverloadResult, measure_overload
from bench.procs import (
    Child,
    Children,
    cpu_time_s,
    log_tail,
    machine_cpu,
    own_cpu_time_s,
    peak_rss_bytes,
    pin,
)
from bench.report import (
    FAREGATE,
    FAREGATE_SQLITE,
    PASSTHROUGH,
    BenchReport,
    render,
    render_tool_calls,
)
from bench.rounds import (
    Round,
    Server,
    Settings,
    ToolCallFigures,
    measure_tool_calls,
    round_order,
    run_round,
)

OVERLOAD_BURST = 200
_WARM_UP_CALLS = 400
_WARM_UP_STREAMS = 8
_WARM_UP_TOOL_CALLS = 40
_TOOL_CALL_ROUNDS = 2
_WARM_UP_MAX_DURATION_S = 15.0
_DIRECT_CONNECTIONS = 128


def _faregate_command() -> list[str]:
    script = Path(sys.executable).with_name("faregate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "faregate_server"]


def _serve_command(config: Path) -> list[str]:
    return [
        *_faregate_command(),
        "serve",
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _phase_progress(prefix: str, phase: str) -> None:
    _progress(f"{prefix}: {phase}")


def _check_warm_up(name: str, results: list[LoadResult], log: str) -> None:
    for result in results:
        if result.failed:
            raise RuntimeError(
                f"{name} failed {result.failed} warm-up calls; the first: {result.first_error}"
                f"\n{log}"
            )


async def _warm_up(child: Child, target: GrpcTarget) -> None:
    """Opens connections and pays first-use costs; a failure here stops the bench."""
    results = [
        await closed_loop(
            target.route,
            concurrency=64,
            max_calls=_WARM_UP_CALLS,
            max_duration_s=_WARM_UP_MAX_DURATION_S,
        ),
        await closed_loop(
            target.stream,
            concurrency=4,
            max_calls=_WARM_UP_STREAMS,
            max_duration_s=_WARM_UP_MAX_DURATION_S,
        ),
        await closed_loop(
            target.route_with_tools,
            concurrency=16,
            max_calls=_WARM_UP_TOOL_CALLS,
            max_duration_s=_WARM_UP_MAX_DURATION_S,
        ),
        await closed_loop(
            target.stream_tool_call,
            concurrency=4,
            max_calls=_WARM_UP_TOOL_CALLS,
            max_duration_s=_WARM_UP_MAX_DURATION_S,
        ),
    ]
    _check_warm_up(child.name, results, log_tail(child.log_path))


@dataclass(frozen=True, slots=True)
class _Measurements:
    rounds: list[Round]
    peak_rss_bytes: dict[str, int]
    """Per server under test, read after the rounds."""
    overload: OverloadResult
    default_config_served: int
    default_config_rss_bytes: int
    background_cores: float
    """CPU other processes used during the rounds, in cores (0.5 = half a core)."""
    steal_cores: float


async def _measure(
    upstream: Child, measured: list[Child], default: Child, settings: Settings
) -> _Measurements:
    """Measures the servers under test (faregate first) in interleaved rounds."""
    faregate = measured[0]
    api_base = f"http://{upstream.target}/v1"
    async with AsyncExitStack() as stack:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=_DIRECT_CONNECTIONS, limit_per_host=_DIRECT_CONNECTIONS
            )
        )
        stack.push_async_callback(session.close)
        servers = []
        for child in measured:
            name = child.name
            channel = grpc.aio.insecure_channel(child.target)
            stack.push_async_callback(channel.close)
            target = GrpcTarget(channel)
            _progress(f"warming up {name}")
            await _warm_up(child, target)
            servers.append(Server(name=name, pid=child.pid, target=target))
        direct = DirectTarget(session, api_base)
        direct_warm_up = await closed_loop(
            direct.route,
            concurrency=16,
            max_calls=_WARM_UP_CALLS,
            max_duration_s=_WARM_UP_MAX_DURATION_S,
        )
        _check_warm_up("the upstream", [direct_warm_up], log_tail(upstream.log_path))

        bench_pids = [child.pid for child in (upstream, *measured, default)]
        machine_before, bench_before_s = machine_cpu(), _bench_cpu_s(bench_pids)
        rounds_started_s = time.monotonic()
        rounds = []
        for index in range(settings.rounds):
            order = round_order(servers, index)
            prefix = f"round {index + 1}/{settings.rounds} ({', '.join(s.name for s in order)})"
            rounds.append(
                await run_round(
                    order,
                    direct,
                    upstream.pid,
                    settings,
                    progress=functools.partial(_phase_progress, prefix),
                )
            )
        rounds_elapsed_s = time.monotonic() - rounds_started_s
        machine_after, bench_after_s = machine_cpu(), _bench_cpu_s(bench_pids)
        peak_rss = {server.name: peak_rss_bytes(server.pid) for server in servers}

    _progress(f"overload: a burst of {OVERLOAD_BURST} at the slow model")
    overload = await measure_overload(faregate.target, faregate.pid, OVERLOAD_BURST)
    _progress("memory: faregate on its default config")
    served = await exercise_default_config(default.target)
    return _Measurements(
        rounds=rounds,
        peak_rss_bytes=peak_rss,
        overload=overload,
        default_config_served=served,
        default_config_rss_bytes=peak_rss_bytes(default.pid),
        background_cores=(
            machine_after.busy_s - machine_before.busy_s - (bench_after_s - bench_before_s)
        )
        / rounds_elapsed_s,
        steal_cores=(machine_after.steal_s - machine_before.steal_s) / rounds_elapsed_s,
    )


def _bench_cpu_s(child_pids: list[int]) -> float:
    return own_cpu_time_s() + sum(cpu_time_s(pid) for pid in child_pids)


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Handled as Ctrl-C is: asyncio.run cancels the measurement (or, outside it,
    # KeyboardInterrupt unwinds), every context exits and the children are stopped.
    signal.raise_signal(signal.SIGINT)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tool-calls", action="store_true", help="run only the tool-call phase, and print it"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=_TOOL_CALL_ROUNDS,
        help=f"rounds of the tool-call phase (with --tool-calls; default {_TOOL_CALL_ROUNDS})",
    )
    args = parser.parse_args()
    started_s = time.monotonic()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpu = cpus[0], cpus[-1]
    if server_cpu == load_cpu:
        _progress(f"only cpu {server_cpu} is available: servers and load share it")
    pin(os.getpid(), {load_cpu})
    # Ctrl-C must work even when a shell started the bench with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        if args.tool_calls:
            print(_run_tool_calls(server_cpu, load_cpu, args.rounds), flush=True)
            return 0
        report = _run(server_cpu, load_cpu, started_s)
        print(render(report), flush=True)
        print(routing_report.render(asyncio.run(routing_sim.simulate())), flush=True)
        print(hedging.render(asyncio.run(hedging.measure())), flush=True)
        print(state.render(asyncio.run(state.measure())), flush=True)
        print(telemetry.render(telemetry.measure(), telemetry.hooks_off_ns()), flush=True)
        print(admission.render(admission.measure(server_cpu, load_cpu)), flush=True)
        print(prompt_cache.render(asyncio.run(prompt_cache.measure())), flush=True)
    except KeyboardInterrupt:
        _progress("interrupted; every server it started is stopped")
        return 130
    return 0


def _run(server_cpu: int, load_cpu: int, started_s: float) -> BenchReport:
    settings = Settings()
    with (
        tempfile.TemporaryDirectory(prefix="faregate-bench-") as scratch,
        Children(Path(scratch)) as children,
    ):
        _progress(
            "starting the upstream, faregate (memory and sqlite state), the pass-through,"
            " default faregate"
        )
        upstream = children.start("upstream", [sys.executable, "-m", "bench.upstream"], {load_cpu})
        api_base = f"http://{upstream.target}/v1"
        config = write_bench_config(Path(scratch) / "faregate.yaml", api_base)
        # The shipped default backend, on a ledger file of its own.
        sqlite_config = write_bench_config(
            Path(scratch) / "faregate-sqlite.yaml",
            api_base,
            sqlite_state(Path(scratch) / "ledger.db"),
        )
        faregate = children.start(FAREGATE, _serve_command(config), {server_cpu})
        faregate_sqlite = children.start(
            FAREGATE_SQLITE, _serve_command(sqlite_config), {server_cpu}
        )
        passthrough = children.start(
            PASSTHROUGH,
            [sys.executable, "-m", "bench.passthrough", "--upstream", api_base],
            {server_cpu},
        )
        default = children.start(
            "faregate-default",
            [
                *_faregate_command(),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ],
            {server_cpu},
        )
        measured = asyncio.run(
            _measure(upstream, [faregate, faregate_sqlite, passthrough], default, settings)
        )
    return BenchReport(
        settings=settings,
        server_cpu=server_cpu,
        load_cpu=load_cpu,
        rounds=measured.rounds,
        peak_rss_bytes=measured.peak_rss_bytes,
        default_config_rss_bytes=measured.default_config_rss_bytes,
        default_config_served=measured.default_config_served,
        overload=measured.overload,
        background_cores=measured.background_cores,
        steal_cores=measured.steal_cores,
        elapsed_s=time.monotonic() - started_s,
    )


def _run_tool_calls(server_cpu: int, load_cpu: int, rounds: int) -> str:
    """The tool-call phase alone, on faregate (memory state) and the pass-through."""
    settings = Settings()
    with (
        tempfile.TemporaryDirectory(prefix="faregate-bench-") as scratch,
        Children(Path(scratch)) as children,
    ):
        _progress("starting the upstream, faregate and the pass-through")
        upstream = children.start("upstream", [sys.executable, "-m", "bench.upstream"], {load_cpu})
        api_base = f"http://{upstream.target}/v1"
        config = write_bench_config(Path(scratch) / "faregate.yaml", api_base)
        measured = [
            children.start(FAREGATE, _serve_command(config), {server_cpu}),
            children.start(
                PASSTHROUGH,
                [sys.executable, "-m", "bench.passthrough", "--upstream", api_base],
                {server_cpu},
            ),
        ]
        figures = asyncio.run(_measure_tool_calls(upstream, measured, settings, rounds))
    return render_tool_calls(figures, settings, [child.name for child in measured])


async def _measure_tool_calls(
    upstream: Child, measured: list[Child], settings: Settings, rounds: int
) -> list[dict[str, ToolCallFigures]]:
    async with AsyncExitStack() as stack:
        servers = []
        for child in measured:
            channel = grpc.aio.insecure_channel(child.target)
            stack.push_async_callback(channel.close)
            target = GrpcTarget(channel)
            _progress(f"warming up {child.name}")
            await _warm_up(child, target)
            servers.append(Server(name=child.name, pid=child.pid, target=target))
        figures = []
        for index in range(rounds):
            order = round_order(servers, index)
            prefix = f"round {index + 1}/{rounds} ({', '.join(s.name for s in order)})"
            figures.append(
                await measure_tool_calls(
                    order,
                    upstream.pid,
                    settings,
                    progress=functools.partial(_phase_progress, prefix),
                )
            )
        return figures


if __name__ == "__main__":
    sys.exit(main())
