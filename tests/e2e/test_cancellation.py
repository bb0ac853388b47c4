"""A caller that cancels, or whose deadline passes, stops the upstream at once.

The fake upstream records the moment its client went away; these tests hold
that moment to within 100 ms of the caller's cancel or deadline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from faregate_client import DeadlineExceeded

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

CANCEL_WINDOW_S = 0.1


@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
async def test_cancelled_route_closes_the_upstream_request_within_100ms(
    faregate: Faregate, upstream: FakeUpstream, model: str
) -> None:
    upstream.default = Script(hang_s=30)
    call = asyncio.create_task(faregate.client.route("hi", budget_key="team", model=model))
    await upstream.wait_for_requests(1)

    cancelled_at = time.monotonic()
    call.cancel()
    await upstream.wait_for_disconnects(1)

    assert upstream.disconnected_at[0] - cancelled_at < CANCEL_WINDOW_S
    with pytest.raises(asyncio.CancelledError):
        await call
    await _wait_until_settled(faregate)
    assert await faregate.spent_nano_usd() == 0


@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
async def test_cancelled_stream_closes_the_upstream_mid_stream_and_charges_delivery(
    faregate: Faregate, upstream: FakeUpstream, model: str
) -> None:
    upstream.default = Script(chunks=[f" t{i}" for i in range(200)], chunk_delay_s=0.05)
    stream = faregate.client.stream_route("go", budget_key="team", model=model)
    received = []

    async for text in stream:
        received.append(text)
        if len(received) == 3:
            break
    cancelled_at = time.monotonic()
    stream.cancel()
    await upstream.wait_for_disconnects(1)

    assert upstream.disconnected_at[0] - cancelled_at < CANCEL_WINDOW_S
    await _wait_until_settled(faregate)
    # Charged for the input and at least the three chunks the caller read.
    assert await faregate.spent_nano_usd() > 0


async def test_deadline_passing_mid_call_is_deadline_exceeded_and_closes_upstream(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(hang_s=30)

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=0.3)
    await upstream.wait_for_disconnects(1)

    assert upstream.disconnected_at[0] - (started + 0.3) < CANCEL_WINDOW_S
    await _wait_until_settled(faregate)
    assert await faregate.spent_nano_usd() == 0


async def test_deadline_passing_mid_stream_closes_upstream(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=[f" t{i}" for i in range(200)], chunk_delay_s=0.05)

    started = time.monotonic()
    stream = faregate.client.stream_route("go", budget_key="team", model="gpt-fake", timeout_s=0.4)
    with pytest.raises(DeadlineExceeded):
        await read_stream(stream)
    await upstream.wait_for_disconnects(1)

    assert upstream.disconnected_at[0] - (started + 0.4) < CANCEL_WINDOW_S
    await _wait_until_settled(faregate)
    assert await faregate.spent_nano_usd() > 0


async def test_caller_without_deadline_gets_the_configured_default(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["server"]["default_deadline_s"] = 0.3
    upstream.default = Script(hang_s=30)
    async with start_faregate(to_config(config_data)) as faregate:
        with pytest.raises(DeadlineExceeded) as caught:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake")
        await upstream.wait_for_disconnects(1)

        assert caught.value.reason == "DEADLINE_EXCEEDED"
        assert await faregate.reserved_nano_usd() == 0


async def _wait_until_settled(faregate: Faregate) -> None:
    """The server settles a cancelled call right after the cancel reaches it."""

    async def settled() -> bool:
        # Polled: the server's budget store offers no event to wait on.
        return await faregate.reserved_nano_usd() == 0

    await eventually(settled, interval_s=0.001)
