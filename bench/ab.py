"""An interleaved A/B of two faregate checkouts: CPU per Route, per streamed token
and per tool call (a Route with 5 tools, a streamed tool call).

    git worktree add /tmp/faregate-before <rev>
    cd /tmp/faregate-before
    /path/to/faregate/.venv/bin/python /path/to/faregate/bench/ab.py \\
        /tmp/faregate-before /path/to/faregate 10 [memory|sqlite|sqlite-normal]

It is run from the older checkout, whose bench drives the load and writes the
config, so both faregates accept it (configs only gain keys); its rounds
send requests with tools, so both checkouts must be from after faregate
took them. A checkout
from before the bench moved out of tests/ keeps it in tests/bench: for one,
run this file as it was then, `git show d1ebe5e:tests/bench/ab.py`. A and B are
two `faregate serve` processes, each importing its own checkout's code,
measured with the bare pass-through in the same rounds (`rounds.py`), the
order varied as `rounds.round_order` does. The last argument is the state
both faregates run on: memory (the default, as in the bench config), or
sqlite on a ledger file of each one's own, with its default synchronous or
`state.sqlite_synchronous: normal`. Printed: each round's figures, then the
medians and the median of the per-round B/A ratios. Not a test: it reports.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the older checkout's bench, wherever this file is

import aiohttp
import grpc

from bench.__main__ import _warm_up
from bench.faregate_config import MEMORY_STATE, sqlite_state, write_bench_config
from bench.load import DirectTarget, GrpcTarget
from bench.procs import Child, Children, pin
from bench.rounds import Round, Server, ServerRound, Settings, round_order, run_round

_NAMES = ("A", "B", "passthrough")
_FIGURES: tuple[tuple[str, Callable[[ServerRound], float]], ...] = (
    ("CPU per Route at c=1 (us)", lambda s: s.cpu_per_request_s[1] * 1e6),
    ("CPU per Route at c=16 (us)", lambda s: s.cpu_per_request_s[16] * 1e6),
    ("CPU per streamed token (us)", lambda s: s.cpu_per_token_s * 1e6),
    ("CPU per Route with 5 tools at c=16 (us)", lambda s: s.tool_calls.cpu_per_route_s * 1e6),
    ("CPU per streamed tool call (us)", lambda s: s.tool_calls.cpu_per_stream_s * 1e6),
)


def _quiet(phase: str) -> None:
    del phase


def _faregate(tree: str, config: Path) -> list[str]:
    faregate = str(Path(sys.executable).with_name("faregate"))
    return [
        "env",
        f"PYTHONPATH={tree}/server:{tree}/client",
        faregate,
        "serve",
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]


async def _rounds(children: dict[str, Child], upstream: Child, settings: Settings) -> list[Round]:
    async with AsyncExitStack() as stack:
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)
        servers = []
        for name in _NAMES:
            channel = grpc.aio.insecure_channel(children[name].target)
            stack.push_async_callback(channel.close)
            target = GrpcTarget(channel)
            await _warm_up(children[name], target)
            servers.append(Server(name=name, pid=children[name].pid, target=target))
        direct = DirectTarget(session, f"http://{upstream.target}/v1")
        rounds = []
        for index in range(settings.rounds):
            order = round_order(servers, index)
            measured = await run_round(order, direct, upstream.pid, settings, progress=_quiet)
            rounds.append(measured)
            print(
                f"round {index + 1}: "
                + " | ".join(
                    f"{name} " + " ".join(f"{f(measured.servers[name]):.1f}" for _, f in _FIGURES)
                    for name in _NAMES
                ),
                flush=True,
            )
        return rounds


def main() -> None:
    tree_a, tree_b, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    backend = sys.argv[4] if len(sys.argv) > 4 else "memory"
    if backend not in ("memory", "sqlite", "sqlite-normal"):
        raise SystemExit(f"state {backend!r}: memory, sqlite or sqlite-normal")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, load_cpu = cpus[0], cpus[-1]
    pin(os.getpid(), {load_cpu})
    settings = Settings(rounds=rounds)
    with tempfile.TemporaryDirectory() as scratch, Children(Path(scratch)) as children:
        upstream = children.start("upstream", [sys.executable, "-m", "bench.upstream"], {load_cpu})
        configs = {
            name: write_bench_config(
                Path(scratch) / f"faregate-{name}.yaml",
                f"http://{upstream.target}/v1",
                MEMORY_STATE
                if backend == "memory"
                else sqlite_state(
                    Path(scratch) / f"ledger-{name}.db",
                    "normal" if backend == "sqlite-normal" else None,
                ),
            )
            for name in ("A", "B")
        }
        started = {
            "A": children.start("A", _faregate(tree_a, configs["A"]), {server_cpu}),
            "B": children.start("B", _faregate(tree_b, configs["B"]), {server_cpu}),
            "passthrough": children.start(
                "passthrough",
                [
                    sys.executable,
                    "-m",
                    "bench.passthrough",
                    "--upstream",
                    f"http://{upstream.target}/v1",
                ],
                {server_cpu},
            ),
        }
        measured = asyncio.run(_rounds(started, upstream, settings))
    for label, figure in _FIGURES:
        a, b, passthrough = (
            statistics.median(figure(r.servers[name]) for r in measured) for name in _NAMES
        )
        ratio = statistics.median(figure(r.servers["B"]) / figure(r.servers["A"]) for r in measured)
        print(
            f"{label}: A {a:.1f}, B {b:.1f}, pass-through {passthrough:.1f};"
            f" B/A {ratio:.3f} (median of rounds);"
            f" A {a / passthrough:.2f}x, B {b / passthrough:.2f}x the pass-through"
        )


if __name__ == "__main__":
    main()
