"""`python -m bench.sse_parse`: what faregate's SSE parser costs per event.

Feeds N OpenAI-shaped chunks into aiohttp's own StreamReader one per loop
turn (tokens arrive one by one) and reads them back through `iter_sse` with
its idle watch and size cap; prints the median microseconds per event over
seven runs, the producer's loop hop included. Compare runs on one machine
only: the figure moves with the CPU and its load.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import aiohttp
from aiohttp.base_protocol import BaseProtocol
from faregate_server.upstream.providers.reading import IdleWatch
from faregate_server.upstream.providers.sse import iter_sse

EVENTS = 20_000
_CHUNK = {
    "id": "chatcmpl-bench",
    "object": "chat.completion.chunk",
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}],
}
EVENT = f"data: {json.dumps(_CHUNK)}\n\n".encode()


class _Transport:
    """Just enough of a transport for a StreamReader fed by hand."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def _one_run() -> float:
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    protocol.connection_made(_Transport())  # type: ignore[arg-type]
    reader = aiohttp.StreamReader(protocol, 2**16, loop=loop)

    async def produce() -> None:
        for _ in range(EVENTS):
            reader.feed_data(EVENT)
            await asyncio.sleep(0)
        reader.feed_eof()

    producer = asyncio.ensure_future(produce())
    watch = IdleWatch(reader, 30.0)
    count = 0
    started = time.perf_counter()
    async for _ in iter_sse(reader, watch, 3 << 20):
        count += 1
    elapsed = time.perf_counter() - started
    watch.close()
    await producer
    assert count == EVENTS
    return elapsed / EVENTS * 1e6


async def main() -> None:
    await _one_run()  # warm-up
    runs = [await _one_run() for _ in range(7)]
    print(f"iter_sse: {statistics.median(runs):.2f} µs per event (median of 7 runs)")


if __name__ == "__main__":
    asyncio.run(main())
