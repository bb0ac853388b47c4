"""Warm-up for the memory goal: faregate on its embedded default config.

The goal (peak RSS at most 120 MiB) is about faregate as a newcomer runs it:
`faregate serve` with no --config. Before its VmHWM is read it serves some
default-route requests, whole and streamed, from the `demo` budget, so lazy
imports, first-use caches and per-connection buffers are all paid for. The
requests ask for a few tokens only: the simulated models pace their tokens,
and the goal is about memory, not time.
"""

from __future__ import annotations

import asyncio

from faregate_client import FaregateClient, FaregateError

from bench.load import CALL_TIMEOUT_S, PROMPT

DEMO_BUDGET = "demo"
_REQUESTS = 64
_STREAMS = 16
_CONCURRENCY = 32
_MAX_OUTPUT_TOKENS = 8


async def exercise_default_config(target: str) -> int:
    """Serves default-route requests through faregate; returns how many succeeded.

    A failed request is not an error here: it still exercised the server.
    """
    slots = asyncio.Semaphore(_CONCURRENCY)
    # No client request ids: each one's result would be kept for a day
    # (state.request_id_window_s), and the goal is faregate's own footprint.
    async with FaregateClient(target, generate_request_ids=False) as client:

        async def route() -> int:
            async with slots:
                try:
                    await client.route(
                        PROMPT,
                        budget_key=DEMO_BUDGET,
                        max_output_tokens=_MAX_OUTPUT_TOKENS,
                        timeout_s=CALL_TIMEOUT_S,
                    )
                except FaregateError:
                    return 0
            return 1

        async def stream() -> int:
            async with slots:
                try:
                    async for _ in client.stream_route(
                        PROMPT,
                        budget_key=DEMO_BUDGET,
                        max_output_tokens=_MAX_OUTPUT_TOKENS,
                        timeout_s=CALL_TIMEOUT_S,
                    ):
                        pass
                except FaregateError:
                    return 0
            return 1

        async with asyncio.timeout(4 * CALL_TIMEOUT_S), asyncio.TaskGroup() as group:
            tasks = [group.create_task(route()) for _ in range(_REQUESTS)]
            tasks += [group.create_task(stream()) for _ in range(_STREAMS)]
    return sum(task.result() for task in tasks)
