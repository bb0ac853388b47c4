from __future__ import annotations

import asyncio

import pytest
from faregate_server.errors import PoolSaturated
from faregate_server.upstream.pools import _SERVICE_TIME_SMOOTHING, ModelPool


async def test_pool_admits_workers_then_queues_then_rejects() -> None:
    pool = ModelPool("m", workers=2, queue=1)
    release = asyncio.Event()
    entered = 0

    async def hold() -> None:
        nonlocal entered
        async with pool.slot():
            entered += 1
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(3)]
    await asyncio.sleep(0)

    assert pool.statistics().in_use == 2
    assert pool.statistics().waiting == 1
    with pytest.raises(PoolSaturated):
        async with pool.slot():
            pass
    release.set()
    await asyncio.gather(*holders)
    assert entered == 3
    stats = pool.statistics()
    assert (stats.in_use, stats.waiting, stats.rejected_total) == (0, 0, 1)


async def test_cancelled_waiter_frees_its_place_in_the_queue() -> None:
    pool = ModelPool("m", workers=1, queue=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with pool.slot():
            await release.wait()

    holder = asyncio.create_task(hold())
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)

    assert pool.statistics().waiting == 0
    latecomer = asyncio.create_task(hold())  # takes the freed queue place
    await asyncio.sleep(0)
    assert pool.statistics().waiting == 1
    release.set()
    await asyncio.gather(holder, latecomer)
    assert pool.statistics().in_use == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    pool = ModelPool("m", workers=1, queue=5)
    order: list[int] = []
    gate = asyncio.Event()

    async def use(index: int) -> None:
        async with pool.slot():
            order.append(index)
            await gate.wait()

    tasks = []
    for index in range(5):
        tasks.append(asyncio.create_task(use(index)))
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)

    assert order == [0, 1, 2, 3, 4]


async def test_service_time_is_timed_on_the_injected_stopwatch() -> None:
    # Not the event loop's clock: uvloop's ticks in whole milliseconds, so a
    # fast upstream's service time would read 0.
    readings = iter([10.0, 10.000_25])
    pool = ModelPool("m", workers=1, queue=0, perf_s=lambda: next(readings))

    async with pool.slot():
        pass

    assert pool.statistics().mean_service_time_s == pytest.approx(
        _SERVICE_TIME_SMOOTHING * 0.000_25
    )
