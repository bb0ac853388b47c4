"""Per-model worker pools with a bounded waiting room.

Each model has `workers` slots for concurrent upstream calls and room for
`queue` callers to wait, first come first served. A caller arriving when both
are full is rejected at once with `PoolSaturated`: faregate never queues
without bound and never leaves a caller hanging. A waiter that is cancelled
(its caller went away or its deadline passed) leaves the queue immediately;
asyncio's semaphore removes cancelled waiters and hands their turn on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from faregate_server.errors import PoolSaturated

_MIN_RETRY_AFTER_S = 0.05
_MAX_RETRY_AFTER_S = 30.0
_SERVICE_TIME_SMOOTHING = 0.1


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    workers: int
    queue_capacity: int
    in_use: int
    waiting: int
    rejected_total: int
    mean_service_time_s: float


class ModelPool:
    """Bounds one model's concurrent upstream calls; use `async with pool.slot():`."""

    def __init__(
        self, model: str, workers: int, queue: int, perf_s: Callable[[], float] = time.perf_counter
    ) -> None:
        """`perf_s`: the stopwatch that times each slot's service (`Clock.perf_s`)."""
        self._model = model
        self._perf_s = perf_s
        self._workers = workers
        self._queue_capacity = queue
        self._slots = asyncio.Semaphore(workers)
        self._in_use = 0
        self._waiting = 0
        self._rejected_total = 0
        # Smoothed service time, to tell rejected callers when a slot is likely free.
        self._mean_service_time_s = 0.0

    def slot(self) -> _Slot:
        """A context manager holding one worker slot for its body."""
        return _Slot(self)

    async def _acquire(self) -> None:
        if self._in_use >= self._workers or self._waiting:
            if self._waiting >= self._queue_capacity:
                self._rejected_total += 1
                raise PoolSaturated(self._model, self.retry_after_s())
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            # A free slot and nobody waiting: acquire() completes without suspending.
            await self._slots.acquire()
        self._in_use += 1

    def _release(self, service_time_s: float) -> None:
        self._mean_service_time_s += _SERVICE_TIME_SMOOTHING * (
            service_time_s - self._mean_service_time_s
        )
        self._in_use -= 1
        self._slots.release()

    @property
    def saturated(self) -> bool:
        """Whether a new caller would be rejected now."""
        return self._waiting >= self._queue_capacity and (
            self._in_use >= self._workers or self._waiting > 0
        )

    def retry_after_s(self) -> float:
        """How long a rejected caller should wait: about one service time."""
        return min(_MAX_RETRY_AFTER_S, max(_MIN_RETRY_AFTER_S, self._mean_service_time_s))

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            workers=self._workers,
            queue_capacity=self._queue_capacity,
            in_use=self._in_use,
            waiting=self._waiting,
            rejected_total=self._rejected_total,
            mean_service_time_s=self._mean_service_time_s,
        )


class _Slot:
    __slots__ = ("_pool", "_started_s")

    def __init__(self, pool: ModelPool) -> None:
        self._pool = pool
        self._started_s = 0.0

    async def __aenter__(self) -> None:
        await self._pool._acquire()
        self._started_s = self._pool._perf_s()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._pool._release(self._pool._perf_s() - self._started_s)
