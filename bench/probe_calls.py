"""`python -m bench.probe_calls TARGET CALLS`: fires CALLS concurrent
Route calls at TARGET's bench model and prints one JSON line: each call's
outcome ("OK" or "CODE/REASON") and its latency in seconds.

A process of its own, so the calls are timed by a client whose event loop
is not busy with the load that saturates faregate (the saturation
measurement's streams are read in the bench process). The API key comes in
the environment variable FAREGATE_BENCH_API_KEY.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from faregate_client import FaregateClient, FaregateError

from bench.load import BENCH_BUDGET, BENCH_MODEL, PROMPT

API_KEY_ENV = "FAREGATE_BENCH_API_KEY"
_CALL_TIMEOUT_S = 30.0


async def fire(target: str, calls: int, api_key: str) -> list[tuple[str, float]]:
    # No client request ids: the probes are measured as before, with no results kept.
    async with FaregateClient(target, api_key=api_key, generate_request_ids=False) as client:
        # No warm-up call (faregate may refuse it): the calls share the
        # connection's handshake, a few milliseconds against seconds of load.

        async def one() -> tuple[str, float]:
            started_s = time.perf_counter()
            try:
                await client.route(
                    PROMPT,
                    budget_key=BENCH_BUDGET,
                    model=BENCH_MODEL,
                    max_output_tokens=16,
                    timeout_s=_CALL_TIMEOUT_S,
                )
                outcome = "OK"
            except FaregateError as error:
                outcome = f"{error.code.name}/{error.reason}"
            return outcome, time.perf_counter() - started_s

        async with asyncio.timeout(2 * _CALL_TIMEOUT_S):
            return await asyncio.gather(*(one() for _ in range(calls)))


def main() -> int:
    target, calls = sys.argv[1], int(sys.argv[2])
    results = asyncio.run(fire(target, calls, os.environ[API_KEY_ENV]))
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
