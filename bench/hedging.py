"""Hedging: what racing a slow primary buys in time to first token, and what it costs.

A route of two sim models at the same price: the primary (preferred: higher
quality) usually sends its first token after 20 ms but one call in ten after
500 ms, a heavy tail (seeded, so every mode meets much the same slow calls);
the secondary always after 30 ms. The same load runs against a fresh
faregate per mode, in this process, through the real gRPC server and the
typed client (StreamRoute, `CONCURRENCY` at a time, `CALLS` calls, bounded
in time):

- off: no hedging;
- fixed: `hedge_after_s` 60 ms;
- p95: `hedge_after_p95` too, so once the primary's latency tracker holds
  enough samples (8) the delay is its recent p95 time to first token, and
  60 ms before that;
- p95, warmed: the same, its tracker first filled by `WARM_UP_CALLS` unary
  Route calls to the primary, so the p95 delay is in force from the start
  whatever the streams themselves record.

Figures: time to first token (TTFT) at the client, from the call to the first
delta; the share of requests with a hedge among their attempts (from the
`start` message) and of those the hedge served; the cost summed from every
`finish`, against the run without hedging; hedges the primary's retry budget
refused; and the delay p95 mode ended up using. A lost race is released
whole, so the ledger charges nothing for it; the prompt cost of the cancelled
attempts is printed beside, as what an upstream that bills a cancelled
request's prompt would charge on top.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from faregate.v1 import router_pb2
from faregate_client import FaregateClient, FaregateError
from faregate_server.app import serve
from faregate_server.config.load import parse_config
from faregate_server.money import Price, usd_to_nano_usd
from faregate_server.upstream.providers.sim import SimProvider

from bench.load import percentile
from bench.report import align

PRIMARY = "sim-primary"
SECONDARY = "sim-secondary"
ROUTE = "hedged"
BUDGET = "hedging"
CALLS = 300
CONCURRENCY = 8
OUTPUT_TOKENS = 16
TOKEN_DELAY_S = 0.002
PRIMARY_TTFT_S = 0.02
PRIMARY_SLOW_RATE = 0.1
PRIMARY_SLOW_TTFT_S = 0.5
SECONDARY_TTFT_S = 0.03
HEDGE_AFTER_S = 0.06
INPUT_USD_PER_MTOK = 1.00
OUTPUT_USD_PER_MTOK = 4.00
PROMPT = "Write a function that returns the n-th Fibonacci number iteratively."
CALL_TIMEOUT_S = 10.0
RUN_MAX_DURATION_S = 15.0
WARM_UP_CALLS = 64
SEED = 7
RETRY_BUDGET_RATIO = 0.2
"""Hedges spend the primary's retry budget; at the default 0.1 a 10% tail
outruns it about as often as not, and the refused hedges decide the p99."""
PRICE = Price(usd_to_nano_usd(INPUT_USD_PER_MTOK), usd_to_nano_usd(OUTPUT_USD_PER_MTOK))
_NANO_USD_PER_USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    hedge_after_s: float | None
    hedge_after_p95: bool
    warm_up_calls: int = 0
    """Unary Route calls to the primary before the load, to fill its latency tracker."""


MODES = (
    Mode("off", None, False),
    Mode(f"fixed {HEDGE_AFTER_S * 1e3:.0f} ms", HEDGE_AFTER_S, False),
    Mode("p95", HEDGE_AFTER_S, True),
    Mode("p95, warmed", HEDGE_AFTER_S, True, warm_up_calls=WARM_UP_CALLS),
)


def hedge_config(mode: Mode) -> dict[str, Any]:
    """The faregate config of one run, as a YAML-ready mapping."""

    def model(quality: float, sim: dict[str, float]) -> dict[str, Any]:
        return {
            "provider": "sim",
            "quality": quality,
            "input_usd_per_mtok": INPUT_USD_PER_MTOK,
            "output_usd_per_mtok": OUTPUT_USD_PER_MTOK,
            "max_output_tokens": 256,
            "workers": 4 * CONCURRENCY,
            "queue": 4 * CONCURRENCY,
            "sim": {"token_delay_s": TOKEN_DELAY_S, "output_tokens": OUTPUT_TOKENS, **sim},
        }

    route: dict[str, Any] = {"candidates": [PRIMARY, SECONDARY]}
    if mode.hedge_after_s is not None:
        route["hedge_after_s"] = mode.hedge_after_s
    if mode.hedge_after_p95:
        route["hedge_after_p95"] = True
    return {
        "server": {"listen": "127.0.0.1:0", "default_route": ROUTE, "shutdown_grace_s": 1},
        "models": {
            PRIMARY: model(
                0.9,
                {
                    "first_token_delay_s": PRIMARY_TTFT_S,
                    "slow_rate": PRIMARY_SLOW_RATE,
                    "slow_first_token_delay_s": PRIMARY_SLOW_TTFT_S,
                },
            ),
            SECONDARY: model(0.8, {"first_token_delay_s": SECONDARY_TTFT_S}),
        },
        "routes": {ROUTE: route},
        "budgets": {BUDGET: {"limit_usd": 100, "window": "none"}},
        "retries": {"budget_ratio": RETRY_BUDGET_RATIO},
        "auth": {"enabled": False},
    }


@dataclass(frozen=True, slots=True)
class Call:
    """One streamed request as the client saw it."""

    ttft_s: float
    model_used: str
    hedges: int
    """Attempts that were hedges."""
    cancelled: int
    """Attempts that lost the race."""
    hedge_served: bool
    cost_nano_usd: int
    input_tokens: int


@dataclass(frozen=True, slots=True)
class Run:
    mode: Mode
    calls: tuple[Call, ...]
    failed: int
    first_error: str
    hedges_refused: int
    """Hedges the primary's retry budget did not allow."""
    primary_p95_ttft_s: float | None
    """The primary's tracked p95 TTFT at the end: the delay of p95 mode."""
    elapsed_s: float


async def _one(client: FaregateClient) -> Call:
    started_s = time.perf_counter()
    ttft_s = math.nan
    stream = client.stream_route(PROMPT, budget_key=BUDGET, model=ROUTE, timeout_s=CALL_TIMEOUT_S)
    async for _ in stream:
        if math.isnan(ttft_s):
            ttft_s = time.perf_counter() - started_s
    assert stream.start is not None
    assert stream.finish is not None
    attempts = stream.start.attempts
    return Call(
        ttft_s=ttft_s,
        model_used=stream.start.model_used,
        hedges=sum(1 for attempt in attempts if attempt.hedge),
        cancelled=sum(1 for a in attempts if a.outcome == router_pb2.ATTEMPT_OUTCOME_CANCELLED),
        hedge_served=bool(attempts) and attempts[-1].hedge,
        cost_nano_usd=stream.finish.cost_nano_usd,
        input_tokens=stream.finish.usage.input_tokens,
    )


async def _load(client: FaregateClient) -> tuple[list[Call], int, str]:
    """`CALLS` streamed requests from `CONCURRENCY` workers, bounded in time."""
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + RUN_MAX_DURATION_S
    calls: list[Call] = []
    errors: list[str] = []
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < CALLS and loop.time() < deadline_s:
            issued += 1
            try:
                calls.append(await _one(client))
            except FaregateError as error:  # counted and reported, not raised
                errors.append(f"{error.code.name}/{error.reason}: {error}")

    async with asyncio.timeout(RUN_MAX_DURATION_S + CALL_TIMEOUT_S), asyncio.TaskGroup() as group:
        for _ in range(CONCURRENCY):
            group.create_task(worker())
    return calls, len(errors), errors[0] if errors else ""


async def _warm_up(client: FaregateClient, calls: int) -> None:
    """Unary calls straight to the primary, `CONCURRENCY` at a time."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with slots:
            await client.route(PROMPT, budget_key=BUDGET, model=PRIMARY, timeout_s=CALL_TIMEOUT_S)

    async with asyncio.timeout(RUN_MAX_DURATION_S), asyncio.TaskGroup() as group:
        for _ in range(calls):
            group.create_task(one())


async def run_mode(mode: Mode) -> Run:
    """Serves the load through a fresh faregate configured for `mode`."""
    config = parse_config(yaml.safe_dump(hedge_config(mode), sort_keys=False), env={})
    # No client request ids: the load is measured as before, with no results kept for retries.
    async with (
        serve(config) as running,
        FaregateClient(f"127.0.0.1:{running.port}", generate_request_ids=False) as client,
    ):
        primary = running.catalog.deployments[PRIMARY]
        # A seeded tail, so every mode meets much the same slow calls.
        primary.provider = SimProvider(config.models[PRIMARY], random.Random(SEED))
        # Opens the channel on the secondary, so no primary statistics are touched.
        await client.route(PROMPT, budget_key=BUDGET, model=SECONDARY, timeout_s=CALL_TIMEOUT_S)
        await _warm_up(client, mode.warm_up_calls)
        started_s = time.perf_counter()
        calls, failed, first_error = await _load(client)
        elapsed_s = time.perf_counter() - started_s
    return Run(
        mode=mode,
        calls=tuple(calls),
        failed=failed,
        first_error=first_error,
        hedges_refused=primary.retry_budget.statistics().refused_total,
        primary_p95_ttft_s=primary.latency.p95_ttft_s,
        elapsed_s=elapsed_s,
    )


async def measure(progress: bool = True) -> list[Run]:
    """Runs every mode, one after another."""
    runs = []
    for mode in MODES:
        if progress:
            print(f"bench: hedging: {mode.name}", file=sys.stderr, flush=True)
        runs.append(await run_mode(mode))
    return runs


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.0f}"


def _percent(part: int, whole: int) -> str:
    return f"{part / whole * 100:.1f}%" if whole else "n/a"


def _usd(nano_usd: int) -> str:
    return f"${nano_usd / _NANO_USD_PER_USD:.6f}"


def render(runs: Sequence[Run]) -> str:
    """The section as text."""
    baseline = runs[0]
    base_cost = sum(call.cost_nano_usd for call in baseline.calls)
    rows: list[tuple[str, ...]] = [("", *(run.mode.name for run in runs))]

    def row(label: str, *cells: str) -> None:
        rows.append((label, *cells))

    ttfts = [[call.ttft_s for call in run.calls] for run in runs]
    row("requests served / failed", *(f"{len(r.calls)} / {r.failed}" for r in runs))
    for label, fraction in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        row(f"{label} TTFT at the client (ms)", *(_ms(percentile(t, fraction)) for t in ttfts))
    row("max TTFT (ms)", *(_ms(max(t, default=math.nan)) for t in ttfts))
    hedged = [sum(1 for call in run.calls if call.hedges) for run in runs]
    row("requests hedged", *(_percent(h, len(r.calls)) for h, r in zip(hedged, runs, strict=True)))
    row(
        "  of which the hedge served",
        *(
            _percent(sum(call.hedge_served for call in run.calls), h)
            for h, run in zip(hedged, runs, strict=True)
        ),
    )
    row("attempts with hedge=True", *(str(sum(c.hedges for c in r.calls)) for r in runs))
    row("hedges refused by the retry budget", *(str(run.hedges_refused) for run in runs))
    row("primary's tracked p95 TTFT at the end (ms)", *(_ms(r.primary_p95_ttft_s) for r in runs))
    costs = [sum(call.cost_nano_usd for call in run.calls) for run in runs]
    row("cost charged, sum of finish.cost", *(_usd(cost) for cost in costs))
    row(
        "  extra vs off, per request served",
        *(
            _extra_per_request(cost, run, base_cost, baseline)
            for cost, run in zip(costs, runs, strict=True)
        ),
    )
    row("prompt cost of cancelled attempts, if billed", *(_usd(_lost_prompts(r)) for r in runs))
    row("wall time of the run (s)", *(f"{run.elapsed_s:.1f}" for run in runs))
    lines = [
        "",
        f"Hedging: {CALLS} StreamRoute calls per run, {CONCURRENCY} at a time, through the "
        "gRPC server in this process",
        f"  {PRIMARY} (preferred): first token {PRIMARY_TTFT_S * 1e3:.0f} ms, but "
        f"{PRIMARY_SLOW_RATE:.0%} of calls {PRIMARY_SLOW_TTFT_S * 1e3:.0f} ms; {SECONDARY}: "
        f"{SECONDARY_TTFT_S * 1e3:.0f} ms; both ${INPUT_USD_PER_MTOK:g}/${OUTPUT_USD_PER_MTOK:g} "
        f"per Mtok, {OUTPUT_TOKENS} tokens {TOKEN_DELAY_S * 1e3:g} ms apart.",
        f"  Hedges spend the primary's retry budget: retries.budget_ratio {RETRY_BUDGET_RATIO} "
        "(default 0.1), so up to 20% of its requests + 3 per 10 s.",
        f"  p95 modes hedge after {HEDGE_AFTER_S * 1e3:.0f} ms until the primary's tracker "
        f"holds 8 samples; 'warmed' fills it first with {WARM_UP_CALLS} unary Route calls.",
        "",
        *align(rows),
    ]
    lines += [
        f"WARNING: {run.mode.name}: {run.failed} calls failed; the first: {run.first_error}"
        for run in runs
        if run.failed
    ]
    return "\n".join(lines)


def _extra_per_request(cost: int, run: Run, base_cost: int, baseline: Run) -> str:
    if not run.calls or not baseline.calls or not base_cost:
        return "n/a"
    per_request = cost / len(run.calls)
    base_per_request = base_cost / len(baseline.calls)
    return f"{(per_request - base_per_request) / base_per_request:+.1%}"


def _lost_prompts(run: Run) -> int:
    """What the cancelled attempts' prompts cost, were they billed."""
    return sum(call.cancelled * PRICE.cost_nano_usd(call.input_tokens, 0) for call in run.calls)


def main() -> int:
    """`python -m bench.hedging`: runs every mode and prints the section."""
    print(render(asyncio.run(measure())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
