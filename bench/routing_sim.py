"""Routing simulation (not a timed test): what scored routing saves, and what it costs.

10,000 requests of a coding agent's mix (`workload.py`) go to three simulated
models of different price and quality that share one limit pool, under one
budget (`routing_setup.py`), and are served by each policy in turn, every one
a fresh faregate built in-process as `app.py` builds it (no gRPC:
`Gateway.route` is called directly):

- always-best: a route with only the large model;
- always-cheapest: a route with only the small model;
- faregate: a route with all three, scored (`selection.py`); once with the
  default routing knobs, once tuned, and once tuned with each request naming
  its task (the `task` hint an agent may send), which separates what the
  scoring does from what the task classifier does.

Time is simulated. A `FakeClock` moves forward between arrivals, whose rate
ramps from `START_RATE_PER_S` to `END_RATE_PER_S`, so the per-minute limit
pool resets as it would in production and nothing sleeps. Requests arrive in
waves of `WAVE` served concurrently, so their reservations overlap as those
of requests in flight would. `routing_report.py` prints the section.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence

import aiohttp
import yaml
from faregate_server.config.load import parse_config
from faregate_server.domain import ChatMessage, Role, RouteCall, RoutingHints
from faregate_server.errors import FaregateError
from faregate_server.routing.gateway import Gateway
from faregate_server.routing.planner import Planner
from faregate_server.routing.scope import CallScope
from faregate_server.routing.selection import Selector
from faregate_server.routing.settlement import Settlement
from faregate_server.state.ledger import MemoryLedger
from faregate_server.state.store import LocalState
from faregate_server.upstream.catalog import Catalog

from bench.routing_report import render
from bench.routing_setup import (
    BUDGET,
    END_RATE_PER_S,
    POLICIES,
    REQUESTS,
    ROUTE,
    SEED,
    START_RATE_PER_S,
    WAVE,
    Outcome,
    Policy,
    PolicyResult,
    sim_config,
)
from bench.workload import SimRequest, requests
from tests.fakes.clock import FakeClock

_DEADLINE_S = 60.0


def arrival_gaps_s(n: int) -> list[float]:
    """Seconds between arrivals, the rate ramping linearly over the run."""
    step = (END_RATE_PER_S - START_RATE_PER_S) / max(n - 1, 1)
    return [1.0 / (START_RATE_PER_S + step * index) for index in range(n)]


def route_call(request: SimRequest, hint_task: bool) -> RouteCall:
    return RouteCall(
        model=ROUTE,
        messages=(ChatMessage(Role.USER, request.prompt),),
        agent="routing-sim",
        budget_key=BUDGET,
        max_output_tokens=request.max_output_tokens,
        temperature=None,
        metadata={},
        hints=RoutingHints(task=request.task if hint_task else None),
    )


async def run_policy(policy: Policy, workload: Sequence[SimRequest]) -> PolicyResult:
    """Serves the workload through a fresh in-process faregate configured for `policy`."""
    config = parse_config(yaml.safe_dump(sim_config(policy), sort_keys=False), env={})
    clock = FakeClock()
    rng = random.Random(SEED)
    loop = asyncio.get_running_loop()
    calls = [route_call(request, policy.hint_task) for request in workload]
    gaps_s = arrival_gaps_s(len(workload))
    outcomes: list[Outcome] = []
    # The sim provider makes no HTTP calls, but a catalog is built with a session.
    async with aiohttp.ClientSession() as session:
        catalog = Catalog(config, session, clock)
        state = LocalState(config, clock, MemoryLedger())
        planner = Planner(Selector(state.limits, clock, rng))
        gateway = Gateway(catalog, planner, Settlement(state, clock), state, clock, rng)

        async def serve(request: SimRequest, call: RouteCall) -> Outcome:
            try:
                result = await gateway.route(call, CallScope.unobserved(loop.time() + _DEADLINE_S))
            except FaregateError as error:
                return Outcome(request.task, None, "", 0, 0, 0, error.reason)
            return Outcome(
                task=request.task,
                classified=result.decision.task,
                model=result.decision.model,
                cost_nano_usd=result.cost_nano_usd,
                input_tokens=result.usage.input_tokens,
                output_tokens=result.usage.output_tokens,
                reason="",
            )

        started_s = time.perf_counter()
        for start in range(0, len(workload), WAVE):
            wave = range(start, min(start + WAVE, len(workload)))
            clock.advance(sum(gaps_s[index] for index in wave))
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(serve(workload[i], calls[i])) for i in wave]
            outcomes += [task.result() for task in tasks]
        elapsed_s = time.perf_counter() - started_s
    return PolicyResult(policy, tuple(outcomes), elapsed_s)


async def simulate(progress: bool = True) -> list[PolicyResult]:
    """Runs every policy over the same requests, one after another."""
    workload = requests(REQUESTS, SEED)
    results = []
    for policy in POLICIES:
        if progress:
            print(f"bench: routing simulation: {policy.name}", file=sys.stderr, flush=True)
        results.append(await run_policy(policy, workload))
    return results


def main() -> int:
    """`python -m bench.routing_sim`: runs the simulation and prints its section."""
    print(render(asyncio.run(simulate())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
