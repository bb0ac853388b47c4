"""Graceful shutdown: stop admitting requests, let those in flight finish, cut the rest.

`Drain.shutdown()` stops a server in four steps:
1. gRPC health turns NOT_SERVING (overall and per service), so load
   balancers and health-checking clients stop sending here;
2. after `server.drain_delay_s` the gate closes: a new Route or StreamRoute
   gets UNAVAILABLE (SHUTTING_DOWN) with a RetryInfo. The port stays open
   meanwhile, so a late caller gets that clear status rather than a
   connection error. With no delay the gate closes before health flips, so a
   caller that has seen NOT_SERVING is always refused;
3. requests in flight get `server.shutdown_grace_s` to finish, settling as usual;
4. those still running are cut: they end with UNAVAILABLE (SHUTTING_DOWN) and
   settle like any interruption (a stream is charged for what it delivered,
   a request with no output for nothing). Then the gRPC server stops.

A call is cut only while it waits on the gateway, never in the middle of
writing a chunk to its caller, so every chunk the gateway counts as delivered
was handed to gRPC, and the charge matches what the caller received. A cut
that comes during a write takes effect right after it. Nor is a call cut
once it reaches its commit point (`TrackedCall.committing`, the hook its
handler hands the core in the call's scope, called at the commit point,
before the spend is written): it is charged in full, so it ends with its answer.

`hurry()` (a second SIGTERM or Ctrl-C) skips what is left of the delay and
the grace: the requests still running are cut at once.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

import grpc
from grpc_health.v1 import health

from faregate_server.errors import ShuttingDown

logger = logging.getLogger(__name__)

# How long cut calls may take to settle (a ledger write) before the server stops anyway.
_CUT_SETTLE_S = 5.0
# What the gRPC server itself still grants calls this module does not track
# (health, reflection, admin) once the gate has drained.
_UNTRACKED_GRACE_S = 1.0


class Drain:
    """Tracks the calls in flight and runs the graceful stop."""

    def __init__(self) -> None:
        self._calls: set[TrackedCall] = set()
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False
        self._hurried = False
        self._waiting: asyncio.Timeout | None = None

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    @property
    def draining(self) -> bool:
        """True from the start of a stop: what readiness probes should report."""
        return self._draining

    def track(self) -> TrackedCall:
        """A call to run inside `with`; refused once the gate has closed.

        Raises:
            ShuttingDown: the server is stopping and takes no new requests.
        """
        if self._closed:
            raise ShuttingDown("faregate is shutting down and takes no new requests; retry")
        return TrackedCall(self)

    def close(self) -> None:
        """Refuses every call from now on."""
        self._closed = True

    def hurry(self) -> None:
        """Ends the drain delay and the grace now (a second SIGTERM or Ctrl-C)."""
        self._hurried = True
        if self._waiting is not None:
            self._waiting.reschedule(asyncio.get_running_loop().time())

    async def shutdown(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        grace_s: float,
        drain_delay_s: float,
    ) -> None:
        """Stops `server` gracefully (see the module docstring)."""
        self._draining = True
        if drain_delay_s > 0:
            await health_servicer.enter_graceful_shutdown()
            logger.info("stopping: NOT_SERVING for %.1fs before refusing requests", drain_delay_s)
            await self._wait(None, drain_delay_s)
            self.close()
        else:
            self.close()
            await health_servicer.enter_graceful_shutdown()
        logger.info(
            "stopping: draining %d requests in flight for up to %.1fs", self.in_flight, grace_s
        )
        if not await self._wait(self._idle, grace_s):
            logger.warning("stopping: cutting %d requests still in flight", self.in_flight)
            for call in list(self._calls):
                call.cut()
            # Settling the cut calls (their ledger writes) is never hurried.
            if not await self._wait(self._idle, _CUT_SETTLE_S, hurriable=False):
                logger.error("stopping: %d cut requests did not settle", self.in_flight)
        await server.stop(_UNTRACKED_GRACE_S)
        # server.stop cancelled whatever was left (a write blocked by a caller
        # that stopped reading): let those settle before the state closes.
        if not await self._wait(self._idle, _CUT_SETTLE_S, hurriable=False):
            logger.error("stopping: %d requests did not settle", self.in_flight)
        logger.info("stopped")

    async def _wait(
        self, event: asyncio.Event | None, timeout_s: float, *, hurriable: bool = True
    ) -> bool:
        """Waits at most timeout_s for `event` (None: for nothing) and says
        whether it came; a hurriable wait also ends when hurried."""
        if hurriable and self._hurried:
            return event is not None and event.is_set()
        try:
            async with asyncio.timeout(timeout_s) as scope:
                if hurriable:
                    self._waiting = scope
                await (event.wait() if event else asyncio.get_running_loop().create_future())
        except TimeoutError:
            return False
        finally:
            self._waiting = None
        return True

    def _add(self, call: TrackedCall) -> None:
        self._calls.add(call)
        self._idle.clear()

    def _discard(self, call: TrackedCall) -> None:
        self._calls.discard(call)
        if not self._calls:
            self._idle.set()


class TrackedCall:
    """One Route or StreamRoute in flight; `with drain.track() as call:` in its handler.

    A stream marks each write with `writing()` / `written()`. A cut cancels
    the handler's task (when it is not writing), and leaving the `with`
    turns that cancellation into ShuttingDown, much as `asyncio.timeout`
    turns its own into TimeoutError.
    """

    __slots__ = (
        "_cancelled",
        "_cancelling",
        "_committed",
        "_cut",
        "_drain",
        "_task",
        "_writing",
    )

    def __init__(self, drain: Drain) -> None:
        self._drain = drain
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._cut = False
        self._cancelled = False
        self._writing = False
        self._committed = False

    def __enter__(self) -> TrackedCall:
        self._task = asyncio.current_task()
        assert self._task is not None, "a call is tracked from inside its handler task"
        self._cancelling = self._task.cancelling()
        self._drain._add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._drain._discard(self)
        if not self._cancelled:
            return
        assert self._task is not None
        # Undo our own cancellation; one from elsewhere (the caller went away)
        # stays and propagates.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise _cut_error() from None

    def writing(self) -> None:
        """The handler is about to write to its caller: a cut must wait."""
        self._writing = True

    def written(self) -> None:
        """The write is done.

        Raises:
            ShuttingDown: a cut came during the write.
        """
        self._writing = False
        if self._cut:
            raise _cut_error()

    def committing(self) -> None:
        """The call is at its commit point, before its spend is written:
        from now on it is never cut, so its caller gets the answer it is
        charged for. Never suspends or fails."""
        self._committed = True

    def cut(self) -> None:
        """Ends the call now, or right after the write in progress; a call
        that reached its commit point runs to its end."""
        if self._cut or self._committed:
            return
        self._cut = True
        if not self._writing and self._task is not None:
            self._cancelled = True
            self._task.cancel()


def _cut_error() -> ShuttingDown:
    return ShuttingDown(
        "faregate shut down before this request finished; any output already"
        " delivered was charged, nothing more"
    )
