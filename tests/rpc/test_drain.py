"""The drain's call tracking: what a cut does to a handler, wherever it is."""

from __future__ import annotations

import asyncio

import pytest
from faregate_server.errors import ShuttingDown
from faregate_server.rpc.drain import Drain, TrackedCall


async def _started(drain: Drain, body: asyncio.Event, writing: bool = False) -> asyncio.Task[None]:
    """A handler-like task: tracked, optionally mid-write, waiting on `body`."""
    entered = asyncio.Event()

    async def handler() -> None:
        with drain.track() as call:
            if writing:
                call.writing()
            entered.set()
            await body.wait()
            if writing:
                call.written()

    task = asyncio.create_task(handler())
    await entered.wait()
    return task


def _calls(drain: Drain) -> list[TrackedCall]:
    return list(drain._calls)


async def test_a_cut_while_waiting_ends_the_call_with_shutting_down() -> None:
    drain = Drain()
    task = await _started(drain, asyncio.Event())

    _calls(drain)[0].cut()

    with pytest.raises(ShuttingDown):
        await task
    assert task.cancelling() == 0
    assert drain.in_flight == 0


async def test_a_cut_during_a_write_waits_for_the_write_to_finish() -> None:
    drain = Drain()
    write_done = asyncio.Event()
    task = await _started(drain, write_done, writing=True)

    _calls(drain)[0].cut()
    await asyncio.sleep(0)

    assert not task.done()  # the write was not interrupted
    write_done.set()
    with pytest.raises(ShuttingDown):
        await task
    assert drain.in_flight == 0


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    drain = Drain()
    task = await _started(drain, asyncio.Event())

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert drain.in_flight == 0


async def test_a_closed_drain_refuses_new_calls() -> None:
    drain = Drain()
    drain.close()

    with pytest.raises(ShuttingDown) as refused:
        drain.track()

    assert refused.value.details.retry_after_s is not None


async def test_a_call_past_its_commit_point_is_not_cut() -> None:
    drain = Drain()
    commit_done = asyncio.Event()
    entered = asyncio.Event()

    async def handler() -> str:
        with drain.track() as call:
            call.committing()  # the hook the settlement calls, from the call's scope
            entered.set()
            await commit_done.wait()  # the durable write
            return "answer"

    task = asyncio.create_task(handler())
    await entered.wait()
    _calls(drain)[0].cut()
    await asyncio.sleep(0)
    commit_done.set()

    assert await task == "answer"
    assert drain.in_flight == 0


async def test_the_commit_point_belongs_to_its_own_call() -> None:
    drain = Drain()
    body = asyncio.Event()
    other = await _started(drain, body)
    committed = asyncio.Event()

    async def committing_handler() -> None:
        with drain.track() as call:
            call.committing()
            committed.set()
            await body.wait()

    committing = asyncio.create_task(committing_handler())
    await committed.wait()

    for call in _calls(drain):
        call.cut()
    body.set()

    with pytest.raises(ShuttingDown):
        await other  # its neighbour's commit point did not spare it
    await committing
    assert drain.in_flight == 0
