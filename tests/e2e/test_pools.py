"""Per-model pools under overload: the excess is rejected at once with retry
pushback, every admitted request completes, nothing hangs or leaks."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import FaregateError, Unavailable

from tests.conftest import StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

WORKERS = 2
QUEUE = 3


@pytest.fixture
def small_pool_config(config_data: dict[str, Any]) -> dict[str, Any]:
    config_data["models"]["gpt-fake"].update(workers=WORKERS, queue=QUEUE)
    return config_data


async def test_overloaded_pool_rejects_the_excess_and_completes_every_admitted_request(
    start_faregate: StartFaregate, small_pool_config: dict[str, Any], upstream: FakeUpstream
) -> None:
    upstream.default = Script(hang_s=0.3)
    async with start_faregate(to_config(small_pool_config)) as faregate:
        calls = [
            faregate.client.route("hi", budget_key="team", model="gpt-fake") for _ in range(20)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)

        served = [r for r in results if isinstance(r, router_pb2.RouteResponse)]
        rejected = [r for r in results if isinstance(r, FaregateError)]
        assert len(served) == WORKERS + QUEUE
        assert len(rejected) == 20 - WORKERS - QUEUE
        for error in rejected:
            assert isinstance(error, Unavailable)
            assert error.reason == "POOL_SATURATED"
            assert error.metadata == {"model": "gpt-fake"}
            assert error.retry_after_s is not None
            assert error.retry_after_s > 0
        assert upstream.completed == WORKERS + QUEUE
        assert await faregate.reserved_nano_usd() == 0
        assert await faregate.spent_nano_usd() == sum(r.cost_nano_usd for r in served)


async def test_pool_saturation_sends_the_retry_pushback_trailer(
    start_faregate: StartFaregate, small_pool_config: dict[str, Any], upstream: FakeUpstream
) -> None:
    upstream.default = Script(hang_s=0.3)
    async with start_faregate(to_config(small_pool_config)) as faregate:
        occupying = [
            asyncio.create_task(faregate.client.route("hi", budget_key="team", model="gpt-fake"))
            for _ in range(WORKERS + QUEUE)
        ]
        await upstream.wait_for_requests(WORKERS)
        channel = grpc.aio.insecure_channel(faregate.target)
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.RouteRequest(
            model="gpt-fake",
            budget_key="team",
            messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")],
        )

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Route(request)
        await channel.close()

        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        trailers = dict(caught.value.trailing_metadata() or ())
        assert int(trailers["grpc-retry-pushback-ms"]) > 0
        await asyncio.gather(*occupying)


async def test_queued_request_whose_caller_cancels_leaves_the_queue_at_once(
    start_faregate: StartFaregate, small_pool_config: dict[str, Any], upstream: FakeUpstream
) -> None:
    upstream.default = Script(hang_s=0.5)
    async with start_faregate(to_config(small_pool_config)) as faregate:
        pool = faregate.running.catalog.deployments["gpt-fake"].pool
        running = [
            asyncio.create_task(faregate.client.route("hi", budget_key="team", model="gpt-fake"))
            for _ in range(WORKERS)
        ]
        await upstream.wait_for_requests(WORKERS)
        queued = asyncio.create_task(
            faregate.client.route("hi", budget_key="team", model="gpt-fake")
        )
        await eventually(lambda: pool.statistics().waiting == 1, interval_s=0.001)

        queued.cancel()
        await eventually(lambda: pool.statistics().waiting == 0, interval_s=0.001)

        await asyncio.gather(*running)
        assert len(upstream.received) == WORKERS  # the cancelled one never went upstream
        assert await faregate.reserved_nano_usd() == 0


async def test_queued_request_whose_deadline_passes_leaves_the_queue(
    start_faregate: StartFaregate, small_pool_config: dict[str, Any], upstream: FakeUpstream
) -> None:
    upstream.default = Script(hang_s=0.6)
    async with start_faregate(to_config(small_pool_config)) as faregate:
        pool = faregate.running.catalog.deployments["gpt-fake"].pool
        running = [
            asyncio.create_task(faregate.client.route("hi", budget_key="team", model="gpt-fake"))
            for _ in range(WORKERS)
        ]
        await upstream.wait_for_requests(WORKERS)

        with pytest.raises(FaregateError) as caught:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=0.1)

        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: pool.statistics().waiting == 0, interval_s=0.001)
        await asyncio.gather(*running)
        assert len(upstream.received) == WORKERS
        assert await faregate.reserved_nano_usd() == 0
