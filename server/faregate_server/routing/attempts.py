"""Upstream attempts: one call with its bookkeeping, retries, fallbacks and hedges.

`Attempts` gets a request from its first lease to a first result (a whole
completion, or a stream's first item), trying again on failures worth
retrying, within the caller's deadline, the model's retry budget and
`retries.max_attempts`:
- upstream 429, 5xx/529, connection failures, malformed or oversized
  answers and stalls before the first token are retried; a 4xx that would fail anywhere (bad
  request, auth) is not; an oversized answer falls back but is not retried
  on the same model, which would most likely answer (and bill) it again;
- the next attempt goes to the next option of the plan not yet tried (a
  fallback: a first attempt on that model, never charged to the failed
  model's retry budget), else (or when fallback is off) to the same model
  after a full-jitter exponential backoff that also honours Retry-After, if
  that model's retry budget allows: the budget bounds only what a model is
  sent again, by same-model retries and by hedges;
- a 429 takes its model out of rotation for Retry-After (or the configured
  cool-down), and every verdict feeds the model's circuit breaker and latency
  (a failure, but for a rejection or a 429, as a lower bound: see
  `LatencyTracker.cut_short`);
- an answer whose reported usage is implausible (upstream/usage.py) still goes to the
  caller, but counts as a failure for the model's breaker (unless its only
  flaw is a stream's cost over the reservation, which an honest provider can
  report), is counted in a metric and logged; the gateway charges it its
  reservation. A whole answer is not judged against its reservation: its
  believable report is charged in full (routing/settlement.py).
On a hedged route, a primary with no first result after the route's delay
(or its recent p95 time to first token) races a hedge on the next option;
the first to produce wins, the loser is cancelled at once (closing its
upstream connection), and its lease is released. A hedge needs its own lease
(so the budget must cover both) and counts against the primary's retry
budget (given back when no lease can be had), and as a first attempt on the
model it goes to, as a fallback does.

Leases come from, and go back to, the settlement seam (`Leases`): every
lease handed in is released here unless it comes back with the result.

Three clocks, one per purpose (see clock.py): backoffs weighed against the
deadline run on the event loop's clock (the deadline's own, which asyncio's
timeouts read); latencies are timed on the injected `Clock`'s stopwatch
(`perf_s`); cool-downs run on its monotonic time, as the breakers and the
selector read them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from faregate_server.clock import Clock
from faregate_server.config.schema import RetryConfig
from faregate_server.domain import (
    AttemptOutcome,
    AttemptRecord,
    Completion,
    ImplausibleUsage,
    ReportedSoFar,
    ReportedUsage,
    StreamEnd,
    UpstreamRequest,
    UsageFlaw,
)
from faregate_server.routing.hooks import Hooks
from faregate_server.routing.planner import Plan
from faregate_server.routing.selection import Availability, Option, availability, cache_ttl
from faregate_server.routing.settlement import Lease
from faregate_server.upstream.breakers import BreakerTicket
from faregate_server.upstream.catalog import Deployment
from faregate_server.upstream.providers import UpstreamError, UpstreamErrorKind
from faregate_server.upstream.providers.base import ProviderItem, failure_reason
from faregate_server.upstream.usage import judge_usage

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RETRYABLE = {
    UpstreamErrorKind.RATE_LIMITED,
    UpstreamErrorKind.UNAVAILABLE,
    UpstreamErrorKind.STALLED,
    UpstreamErrorKind.OVERSIZED,
}

# Failures that bound the model's latency from below (it took at least this
# long not to answer): all but a rejection (the request's fault, an answer in
# its own right) and a 429 (busy, not slow: the cool-down handles it). So a
# model that only ever fails fast is measured, at least NEUTRAL_LATENCY_S,
# instead of staying unmeasured and being tried first whenever it is idle.
_LATENCY_LOWER_BOUND = frozenset(UpstreamErrorKind) - {
    UpstreamErrorKind.REJECTED,
    UpstreamErrorKind.RATE_LIMITED,
}


class Leases(Protocol):
    """Where attempts get their leases and give them back (routing/settlement.py)."""

    async def lease(self, plan: Plan, options: tuple[Option, ...]) -> Lease | None:
        """A lease on the first of `options` with room, or None."""
        ...

    def release(self, lease: Lease) -> None:
        """Frees a lease whole; never suspends."""
        ...


class AttemptsFailed(Exception):
    """Every attempt allowed failed; carries the last upstream error."""

    def __init__(self, error: UpstreamError, deployment: Deployment) -> None:
        super().__init__(error.message)
        self.error = error
        self.deployment = deployment


def upstream_request(
    plan: Plan, lease: Lease, reported: ReportedSoFar | None = None
) -> UpstreamRequest:
    """What the lease's model is sent; a stream's `reported` keeps the usage
    its adapter is told before the end."""
    option = lease.option
    return UpstreamRequest(
        upstream_model=option.deployment.config.upstream_model,
        messages=plan.call.messages,
        max_output_tokens=option.max_output_tokens,
        temperature=plan.call.temperature,
        options=plan.call.options,
        cache_ttl=cache_ttl(plan.call, plan.route),
        reported=reported,
    )


async def complete_once(
    deployment: Deployment,
    request: UpstreamRequest,
    hooks: Hooks,
    reserved_nano_usd: int,
    clock: Clock,
) -> Completion:
    """One whole-answer call through the model's pool, feeding its health
    (its latency timed on `clock.perf_s`); its usage is judged against what
    the request made possible, though not against its reservation
    (`reserved_nano_usd`, what a lie is charged): a believable report is the
    bill."""
    async with _slot(deployment, hooks):
        _check_breaker(deployment)
        ticket = deployment.breaker.on_attempt_start()
        deployment.latency.started()
        started_s = clock.perf_s()
        attempt = hooks.attempt(deployment)
        active = attempt.activate()
        try:
            completion = await deployment.provider.complete(request)
        except UpstreamError as error:
            attempt.failed(error)
            _record_failure(deployment, ticket, error, clock.perf_s() - started_s)
            raise
        except BaseException:
            attempt.abandoned()
            _record_abandoned(deployment, ticket, clock.perf_s() - started_s)
            raise
        finally:
            attempt.deactivate(active)
            deployment.latency.finished()
        usage = _judged(
            deployment, request, completion.usage, reserved_nano_usd, hooks, stream=False
        )
        attempt.succeeded(usage)
        elapsed_s = clock.perf_s() - started_s
        _record_answer(deployment, ticket, usage)
        deployment.latency.observe(elapsed_s, elapsed_s)
        if usage is not completion.usage:
            # Rare (the usage was not believed): replace keeps the answer whole.
            completion = dataclasses.replace(completion, usage=usage)
        return completion


async def stream_once(
    deployment: Deployment,
    request: UpstreamRequest,
    hooks: Hooks,
    reserved_nano_usd: int,
    clock: Clock,
) -> AsyncGenerator[ProviderItem, None]:
    """One streamed call through the model's pool, feeding its health; the
    usage its end reports is judged as `complete_once` judges it, and against
    the reservation (`reserved_nano_usd`) its cost may not exceed.

    Closing it early (a lost hedge, a caller gone) abandons the attempt
    without a verdict and closes the upstream connection.
    """
    async with _slot(deployment, hooks):
        _check_breaker(deployment)
        ticket = deployment.breaker.on_attempt_start()
        deployment.latency.started()
        started_s = clock.perf_s()
        first_s: float | None = None
        verdict_given = False
        attempt = hooks.attempt(deployment)
        # The attempt's span is current only until the first item: the request
        # is sent by then, and later items are pulled from other contexts.
        active = attempt.activate()
        try:
            async with aclosing(deployment.provider.stream(request)) as items:
                async for item in items:
                    now_s = clock.perf_s()
                    if first_s is None:
                        first_s = now_s
                        attempt.deactivate(active)
                        active = None
                    if isinstance(item, StreamEnd):
                        # The verdict is due now: the consumer may close this
                        # generator as soon as it has the end in hand.
                        verdict_given = True
                        usage = _judged(
                            deployment, request, item.usage, reserved_nano_usd, hooks, stream=True
                        )
                        attempt.succeeded(usage)
                        _record_answer(deployment, ticket, usage)
                        deployment.latency.observe(first_s - started_s, now_s - started_s)
                        if usage is not item.usage:
                            item = dataclasses.replace(item, usage=usage)
                    yield item
        except UpstreamError as error:
            verdict_given = True
            attempt.failed(error)
            _record_failure(deployment, ticket, error, clock.perf_s() - started_s)
            raise
        finally:
            attempt.deactivate(active)
            deployment.latency.finished()
            if not verdict_given:
                attempt.abandoned()
                _record_abandoned(deployment, ticket, clock.perf_s() - started_s)


def _slot(deployment: Deployment, hooks: Hooks) -> AbstractAsyncContextManager[None]:
    """One of the deployment's worker slots, its wait traced when hooks trace it."""
    wait = hooks.pool_wait(deployment)
    slot = deployment.pool.slot()
    return slot if wait is None else _WaitedSlot(slot, wait)


class _WaitedSlot:
    """A worker slot whose wait runs inside a span; the slot itself is the pool's."""

    __slots__ = ("_slot", "_wait")

    def __init__(
        self, slot: AbstractAsyncContextManager[None], wait: AbstractContextManager[object]
    ) -> None:
        self._slot = slot
        self._wait = wait

    async def __aenter__(self) -> None:
        with self._wait:
            await self._slot.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._slot.__aexit__(exc_type, exc, traceback)


def _check_breaker(deployment: Deployment) -> None:
    # Checked again after the wait for a worker, with no await before the
    # attempt registers: the breaker may have opened meanwhile, or its
    # half-open trials been taken.
    if not deployment.breaker.allows():
        raise UpstreamError(UpstreamErrorKind.UNAVAILABLE, "circuit breaker open")


def _judged(
    deployment: Deployment,
    request: UpstreamRequest,
    usage: ReportedUsage,
    reserved_nano_usd: int,
    hooks: Hooks,
    *,
    stream: bool,
) -> ReportedUsage:
    """The answer's usage as judged (a stream's against its reservation too);
    an implausible one is counted and logged here, once."""
    model = deployment.config
    judged = judge_usage(
        usage,
        model.context_window_tokens,
        request.max_output_tokens,
        model.price,
        reserved_nano_usd if stream else None,
    )
    if isinstance(judged, ImplausibleUsage):
        hooks.implausible_usage(deployment, judged)
        # Over the reservation alone (a stream's) is a count of faregate's
        # falling short (a tokenizer's gap, a provider's own framing), not a
        # lie: worth a note, not an alarm.
        level = logging.INFO if judged.flaw is UsageFlaw.OVER_RESERVATION else logging.WARNING
        logger.log(
            level,
            "model %s reported usage %s (%s); charged its reservation of %d nano-USD instead",
            deployment.name,
            judged.reported,
            judged.flaw.value,
            reserved_nano_usd,
        )
    return judged


def _record_answer(deployment: Deployment, ticket: BreakerTicket, usage: ReportedUsage) -> None:
    # An answer whose usage cannot be true is a misbehaving upstream: its
    # caller gets the answer, its model a failure. A stream's report merely
    # over the reservation can be honest (an answer cut at its cap whose
    # prompt the provider counts a token higher than faregate): capped, not
    # blamed.
    if isinstance(usage, ImplausibleUsage) and usage.flaw is not UsageFlaw.OVER_RESERVATION:
        deployment.breaker.on_failure(ticket)
    else:
        deployment.breaker.on_success(ticket)


def _record_failure(
    deployment: Deployment, ticket: BreakerTicket, error: UpstreamError, elapsed_s: float
) -> None:
    """A failed attempt's verdict, for the model's breaker and latency."""
    if error.kind is UpstreamErrorKind.REJECTED:
        # The request was bad, not the upstream: a healthy answer.
        deployment.breaker.on_success(ticket)
    elif error.kind is UpstreamErrorKind.RATE_LIMITED:
        deployment.breaker.on_abandoned(ticket)  # the cool-down handles it
    else:
        deployment.breaker.on_failure(ticket)
    if error.kind in _LATENCY_LOWER_BOUND:
        deployment.latency.cut_short(elapsed_s)


def _record_abandoned(deployment: Deployment, ticket: BreakerTicket, elapsed_s: float) -> None:
    """An attempt ended without a verdict (a lost hedge, a caller gone): no
    word for the breaker, but the model took at least elapsed_s."""
    deployment.breaker.on_abandoned(ticket)
    deployment.latency.cut_short(elapsed_s)


@dataclass(slots=True)
class _Runner(Generic[T]):
    lease: Lease
    task: asyncio.Future[T]
    started_s: float
    hedge: bool
    settled: bool = False
    """Its lease was released and its end recorded."""

    def record(
        self, outcome: AttemptOutcome, error: UpstreamError | None, now_s: float
    ) -> AttemptRecord:
        """Its record, as it ends at `now_s` (the stopwatch, `Clock.perf_s`)."""
        return Attempts._record(self.lease, now_s - self.started_s, self.hedge, outcome, error)


class Attempts:
    """Runs a plan's attempts up to the first result."""

    def __init__(
        self, leases: Leases, retries: RetryConfig, clock: Clock, rng: random.Random
    ) -> None:
        self._leases = leases
        self._retries = retries
        self._clock = clock
        self._rng = rng

    async def first_result(
        self,
        plan: Plan,
        lease: Lease,
        start: Callable[[Lease], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]],
        records: list[AttemptRecord],
        deadline_s: float,
    ) -> tuple[T, Lease, AttemptRecord]:
        """The first successful result of `start`, the lease it holds, and its record
        (cost still zero: the caller settles it).

        Raises:
            AttemptsFailed: no attempt succeeded and no retry is allowed.
        """
        lease.option.deployment.retry_budget.on_request()
        tried: list[Deployment] = []
        while True:
            tried.append(lease.option.deployment)
            try:
                delay_s = self._hedge_delay(plan, lease)
                if delay_s is None or len(records) + 1 >= self._retries.max_attempts:
                    return await self._attempt(lease, start, records)
                return await self._race(plan, lease, start, discard, records, tried, delay_s)
            except AttemptsFailed as failed:
                if len(records) >= self._retries.max_attempts or not _retryable(failed):
                    raise
                next_lease = await self._next_lease(plan, failed, tried, deadline_s)
                if next_lease is None:
                    raise
                lease = next_lease

    async def _attempt(
        self, lease: Lease, start: Callable[[Lease], Awaitable[T]], records: list[AttemptRecord]
    ) -> tuple[T, Lease, AttemptRecord]:
        """One attempt, no hedge: the common case, kept free of tasks."""
        started_s = self._clock.perf_s()
        try:
            result = await start(lease)
        except UpstreamError as error:
            self._leases.release(lease)
            self._feedback(lease.option.deployment, error)
            latency_s = self._clock.perf_s() - started_s
            records.append(self._record(lease, latency_s, False, AttemptOutcome.FAILED, error))
            raise AttemptsFailed(error, lease.option.deployment) from None
        except BaseException:
            self._leases.release(lease)
            raise
        latency_s = self._clock.perf_s() - started_s
        return result, lease, self._record(lease, latency_s, False, AttemptOutcome.SUCCEEDED)

    async def _race(
        self,
        plan: Plan,
        lease: Lease,
        start: Callable[[Lease], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]],
        records: list[AttemptRecord],
        tried: list[Deployment],
        delay_s: float,
    ) -> tuple[T, Lease, AttemptRecord]:
        """The primary attempt, raced by a hedge once it is `delay_s` late.

        Whatever ends the race, cancellation included, every runner but the
        one handed back is cancelled and its lease released before this returns.
        """
        perf_s = self._clock.perf_s
        runners = [_Runner(lease, asyncio.ensure_future(start(lease)), perf_s(), False)]
        winner: _Runner[T] | None = None
        try:
            await asyncio.wait({runners[0].task}, timeout=delay_s)
            if not runners[0].task.done():
                hedge = await self._hedge_lease(plan, lease, tried)
                if hedge is not None:
                    tried.append(hedge.option.deployment)
                    task = asyncio.ensure_future(start(hedge))
                    runners.append(_Runner(hedge, task, perf_s(), True))
            winner = await self._first_success(runners, records)
        finally:
            await self._end_race(runners, winner, discard, records)
        return (
            winner.task.result(),
            winner.lease,
            winner.record(AttemptOutcome.SUCCEEDED, None, perf_s()),
        )

    async def _first_success(
        self, runners: list[_Runner[T]], records: list[AttemptRecord]
    ) -> _Runner[T]:
        """Waits for the first runner to succeed; raises when every one failed."""
        failure: BaseException | None = None
        pending = {runner.task for runner in runners}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for runner in runners:
                if runner.task not in done:
                    continue
                error = runner.task.exception()
                if error is None:
                    return runner
                runner.settled = True
                self._leases.release(runner.lease)
                if isinstance(error, UpstreamError):
                    self._feedback(runner.lease.option.deployment, error)
                    records.append(
                        runner.record(AttemptOutcome.FAILED, error, self._clock.perf_s())
                    )
                    failure = AttemptsFailed(error, runner.lease.option.deployment)
                else:
                    # Not an upstream failure (a full pool, say): it ends this
                    # attempt, not the race.
                    records.append(runner.record(AttemptOutcome.FAILED, None, self._clock.perf_s()))
                    failure = failure or error
        assert failure is not None
        raise failure

    async def _end_race(
        self,
        runners: list[_Runner[T]],
        winner: _Runner[T] | None,
        discard: Callable[[T], Awaitable[None]],
        records: list[AttemptRecord],
    ) -> None:
        """Cancels and releases every runner but the winner, which it hands on.

        Leases are released before any wait, so a second cancellation arriving
        meanwhile cannot leak them; if one does arrive, the winner is given up
        too and the cancellation re-raised once every task has ended.
        """
        losers = [runner for runner in runners if runner is not winner and not runner.settled]
        for runner in losers:
            runner.settled = True
            runner.task.cancel()
            self._leases.release(runner.lease)
            records.append(runner.record(AttemptOutcome.CANCELLED, None, self._clock.perf_s()))
        cancelled = False
        while unfinished := {runner.task for runner in losers if not runner.task.done()}:
            try:
                await asyncio.wait(unfinished)
            except asyncio.CancelledError:
                cancelled = True
        for runner in losers:
            task = runner.task
            if not task.cancelled() and task.exception() is None:
                await discard(task.result())  # finished in a tie: the later one loses
        if cancelled:
            if winner is not None:
                self._leases.release(winner.lease)
                await discard(winner.task.result())
            raise asyncio.CancelledError

    def _hedge_delay(self, plan: Plan, lease: Lease) -> float | None:
        route = plan.route
        if not route.hedged or len(plan.options) < 2:
            return None
        if route.hedge_after_p95:
            p95_s = lease.option.deployment.latency.p95_ttft_s
            if p95_s is not None:
                return p95_s
        return route.hedge_after_s

    async def _hedge_lease(self, plan: Plan, lease: Lease, tried: list[Deployment]) -> Lease | None:
        """The lease for a hedge, paid for by the primary's retry budget (it
        is the primary's request sent again); None if there is none to have.

        The budget is spent before the lease is sought, so a burst of hedges
        cannot overdraw it across the reservation's await, and given back if
        no lease comes of it."""
        primary = lease.option.deployment
        others = self._untried(plan, tried)
        if not others or not primary.retry_budget.try_spend():
            return None
        hedge = await self._leases.lease(plan, others)
        if hedge is None:
            primary.retry_budget.refund()
            return None
        # Like a fallback, a first attempt on the hedged-to model: its budget
        # counts it as a request, so its own retries scale with all the
        # traffic it is sent (the hedge's retry is the primary's, above).
        hedge.option.deployment.retry_budget.on_request()
        return hedge

    async def _next_lease(
        self, plan: Plan, failed: AttemptsFailed, tried: list[Deployment], deadline_s: float
    ) -> Lease | None:
        """The lease for the next attempt, None when no attempt is allowed.

        A fallback to an untried candidate is a first attempt there: it never
        asks the failed model's retry budget, which bounds only what the
        failed model itself is sent again (same-model retries, and hedges).
        """
        deployment = failed.deployment
        others = self._untried(plan, tried)
        lease = await self._leases.lease(plan, others) if others else None
        if lease is not None:
            lease.option.deployment.retry_budget.on_request()
            return lease
        if failed.error.kind is UpstreamErrorKind.OVERSIZED:
            return None  # the same model would most likely send (and bill) it again
        same = tuple(o for o in plan.options if o.deployment is deployment)
        if not same or not deployment.breaker.allows():
            return None
        retry_number = sum(1 for d in tried if d is deployment)
        ceiling_s = self._retries.backoff_base_s * 2 ** (retry_number - 1)
        delay_s = self._rng.uniform(0, min(self._retries.backoff_max_s, ceiling_s))
        delay_s = max(delay_s, deployment.cooldown_until_s - self._clock.monotonic_s())
        if asyncio.get_running_loop().time() + delay_s >= deadline_s:
            return None
        if not deployment.retry_budget.try_spend():
            return None
        lease = await self._leases.lease(plan, same)
        if lease is None:
            deployment.retry_budget.refund()  # no retry was made
            return None
        try:
            await asyncio.sleep(delay_s)
        except BaseException:
            self._leases.release(lease)
            raise
        return lease

    def _untried(self, plan: Plan, tried: list[Deployment]) -> tuple[Option, ...]:
        """The plan's options not tried yet that can serve now, in plan order."""
        return tuple(
            option
            for option in plan.options
            if option.deployment not in tried and _available(option.deployment, self._clock)
        )

    def _feedback(self, deployment: Deployment, error: UpstreamError) -> None:
        if error.kind is UpstreamErrorKind.RATE_LIMITED:
            cooldown_s = error.retry_after_s
            if cooldown_s is None:
                cooldown_s = self._retries.rate_limit_cooldown_s
            deployment.cooldown_until_s = self._clock.monotonic_s() + cooldown_s

    @staticmethod
    def _record(
        lease: Lease,
        latency_s: float,
        hedge: bool,
        outcome: AttemptOutcome,
        error: UpstreamError | None = None,
    ) -> AttemptRecord:
        return AttemptRecord(
            model=lease.option.deployment.name,
            outcome=outcome,
            latency_s=latency_s,
            cost_nano_usd=0,
            hedge=hedge,
            reason="" if error is None else failure_reason(error),
        )


def _available(deployment: Deployment, clock: Clock) -> bool:
    return availability(deployment, clock.monotonic_s()) is Availability.AVAILABLE


def _retryable(failed: AttemptsFailed) -> bool:
    return failed.error.kind in _RETRYABLE
