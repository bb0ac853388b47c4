"""Token counting never holds the event loop: a long prompt, and a long
streamed chunk, are counted off it.

A probe task on the server's loop (the fixture serves in this process) ticks
every 10 ms and records the longest gap between ticks while a prompt of two
523K-character messages is counted (~250 ms of tiktoken work inline) and
refused: it exceeds the model's context window, which is known only once
the prompt is counted. Likewise while a stream relays one chunk of a
megabyte, which an upstream reporting no usage leaves to be counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from faregate_client import InvalidArgument

from tests.conftest import StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script

PROMPT_CHARS = 523_000
MAX_LOOP_LAG_S = 0.1
_TICK_S = 0.01


@asynccontextmanager
async def _loop_gaps() -> AsyncIterator[list[float]]:
    """The gaps beyond its tick between a probe's wake-ups, while the block runs."""
    gaps: list[float] = []
    loop = asyncio.get_running_loop()

    async def probe() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(_TICK_S)
            now = loop.time()
            gaps.append(now - last - _TICK_S)
            last = now

    ticking = asyncio.create_task(probe())
    try:
        await asyncio.sleep(0.05)  # the probe is ticking
        yield gaps
    finally:
        ticking.cancel()


async def test_long_streamed_chunk_is_counted_without_blocking_the_loop(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["models"]["gpt-fake"].update(
        max_output_tokens=1_000_000, context_window_tokens=2_000_000
    )
    chunk = "".join(f" w{number}" for number in range(200_000))  # about 1.3 MB
    upstream.default = Script(chunks=[chunk], usage=None)
    async with start_faregate(to_config(config_data)) as faregate, _loop_gaps() as gaps:
        stream = faregate.client.stream_route("go", budget_key="team", model="gpt-fake")
        await read_stream(stream)
    assert stream.finish is not None
    assert stream.finish.usage.output_tokens > 100_000
    assert max(gaps) < MAX_LOOP_LAG_S, max(gaps)


async def test_long_prompt_is_counted_without_blocking_the_loop(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["server"].update(max_message_chars=PROMPT_CHARS, max_request_bytes=4 << 20)
    text = "def handler(request):\n    return route(request)  # a long paste\n"
    content = (text * (PROMPT_CHARS // len(text) + 1))[:PROMPT_CHARS]
    async with start_faregate(to_config(config_data)) as faregate, _loop_gaps() as gaps:
        with pytest.raises(InvalidArgument) as refused:
            await faregate.client.route(
                [("user", content), ("user", content)], budget_key="team", model="gpt-fake"
            )
    assert refused.value.reason == "MODEL_CANNOT_SERVE"
    assert upstream.received == []
    assert max(gaps) < MAX_LOOP_LAG_S, max(gaps)
