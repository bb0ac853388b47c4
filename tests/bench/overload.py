"""Overload: a burst of concurrent requests at a model with a tiny pool.

The model `slow` has 2 workers and a waiting room of 2, and the fake upstream
holds each of its requests for 200 ms, so of a burst of 200 concurrent
requests about 4 should be served and the rest rejected at once with
UNAVAILABLE / POOL_SATURATED. What matters is how fast a rejection comes back:
a gateway that sheds load must answer "no" in far less time than a request
takes, and spend far less CPU on it than on serving one, or a burst starves
the requests it did accept. The typed client is used here so the ErrorInfo
reason is read the way an agent would read it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from faregate_client import FaregateClient, FaregateError

from tests.bench.load import (
    BENCH_API_KEY,
    BENCH_BUDGET,
    BENCH_MODEL,
    CALL_TIMEOUT_S,
    PROMPT,
    percentile,
)
from tests.bench.procs import cpu_time_s
from tests.bench.upstream import SLOW_MODEL

OUTCOME_OK = "OK"
OUTCOME_POOL_SATURATED = "UNAVAILABLE/POOL_SATURATED"


@dataclass(frozen=True, slots=True)
class OverloadResult:
    burst: int
    outcomes: Counter[str]
    """"OK" or "CODE/REASON" -> how many requests ended so."""
    rejection_p50_s: float
    rejection_p99_s: float
    success_p50_s: float
    success_max_s: float
    server_cpu_per_request_s: float
    """faregate's CPU over the burst divided by its requests (nearly all rejections)."""

    @property
    def rejected(self) -> int:
        return self.outcomes[OUTCOME_POOL_SATURATED]

    @property
    def succeeded(self) -> int:
        return self.outcomes[OUTCOME_OK]


async def measure_overload(target: str, server_pid: int, burst: int) -> OverloadResult:
    """Fires `burst` concurrent Route calls at the slow model and sorts the outcomes."""
    async with FaregateClient(target, api_key=BENCH_API_KEY) as client:
        # Connect and warm up first, so the burst measures faregate, not the handshake.
        await client.route(
            PROMPT, budget_key=BENCH_BUDGET, model=BENCH_MODEL, timeout_s=CALL_TIMEOUT_S
        )

        async def one() -> tuple[str, float]:
            started_s = time.perf_counter()
            try:
                await client.route(
                    PROMPT,
                    budget_key=BENCH_BUDGET,
                    model=SLOW_MODEL,
                    max_output_tokens=16,
                    timeout_s=CALL_TIMEOUT_S,
                )
                outcome = OUTCOME_OK
            except FaregateError as error:
                outcome = f"{error.code.name}/{error.reason}"
            return outcome, time.perf_counter() - started_s

        cpu_before_s = cpu_time_s(server_pid)
        async with asyncio.timeout(2 * CALL_TIMEOUT_S), asyncio.TaskGroup() as group:
            tasks = [group.create_task(one()) for _ in range(burst)]
        server_cpu_s = cpu_time_s(server_pid) - cpu_before_s
    results = [task.result() for task in tasks]
    rejections = [latency for outcome, latency in results if outcome == OUTCOME_POOL_SATURATED]
    successes = [latency for outcome, latency in results if outcome == OUTCOME_OK]
    return OverloadResult(
        burst=burst,
        outcomes=Counter(outcome for outcome, _ in results),
        rejection_p50_s=percentile(rejections, 0.50),
        rejection_p99_s=percentile(rejections, 0.99),
        success_p50_s=percentile(successes, 0.50),
        success_max_s=max(successes, default=float("nan")),
        server_cpu_per_request_s=server_cpu_s / burst,
    )
