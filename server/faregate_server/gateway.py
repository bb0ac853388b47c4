"""The core path: plan, attempt (with retries, fallbacks and hedges), settle.

Settlement rules, for every way a request can end:
- success: commit the provider-reported cost (or, without reported usage, the
  cost of the counted input and the counted delivered output, never more
  than was reserved);
- success with implausible reported usage (usage.py): commit the reservation,
  never the reported figure, and record the report with a flag;
- failure or cancellation before any output reached the caller: release the
  reservation whole, nothing is charged;
- failure or cancellation after output reached the caller: commit the counted
  input and delivered output, never more than was reserved.
A chunk counts as delivered once the consumer comes back for the next item,
that is once the servicer's write of it completed (gRPC flow control let it
out to the caller); a chunk whose write was interrupted is not charged. The
delivered text is counted as it goes (`RunningCount`), never kept whole.
A lease is always either settled or released, whatever interrupts the request,
so the reserved totals of budgets and limit pools return to zero; no commit
exceeds its reservation, whatever an upstream says. Every
settlement leaves a record in the ledger, durable before the spend is reported.

The caller's deadline is enforced by the servicer around these calls; here it
arrives as cancellation, which settles like any other interruption, and as a
value that bounds retry backoffs. A request whose answer is already in hand
is charged even if its deadline passes while the ledger makes that durable:
the provider did the work.

A request with a client request id is served at most once: its id is claimed
before planning, and its result is kept in the same durable step as its
spend; a retry gets that result (or, for a stream, its accounting) instead.
An attempt that ends without a result frees the id for the retry.

Each request reads the current catalog once; a config reload swaps it for new
requests while those in flight finish on the one they started with.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncGenerator
from contextlib import aclosing

from faregate_server.attempts import (
    Attempts,
    AttemptsFailed,
    complete_once,
    stream_once,
    upstream_request,
)
from faregate_server.catalog import Catalog
from faregate_server.clock import Clock
from faregate_server.domain import (
    AttemptRecord,
    Completion,
    ImplausibleUsage,
    ReportedUsage,
    RouteCall,
    RouteResult,
    StreamEnd,
    StreamFinished,
    StreamStarted,
    Usage,
)
from faregate_server.errors import (
    RequestAlreadyServed,
    RequestIdReused,
    StreamInterrupted,
    upstream_failure,
)
from faregate_server.planner import Lease, Plan, Planner
from faregate_server.providers import UpstreamError
from faregate_server.replay import decode_result
from faregate_server.state import StateStore
from faregate_server.telemetry import NO_TELEMETRY, Telemetry
from faregate_server.tokens import RunningCount, count_text

Stream = AsyncGenerator[str | StreamEnd, None]


class Gateway:
    """Serves validated requests; knows nothing of gRPC."""

    def __init__(
        self,
        catalog: Catalog,
        planner: Planner,
        state: StateStore,
        clock: Clock,
        rng: random.Random,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self.catalog = catalog
        """The current catalog; replaced whole by a config reload."""
        self._planner = planner
        self._state = state
        self._clock = clock
        self._rng = rng
        self._telemetry = telemetry

    async def route(self, call: RouteCall, deadline_s: float) -> RouteResult:
        """Serves one request whole; deadline_s is on the event loop's clock.

        A request whose client request id was served before gets that
        result again, neither served nor charged a second time.

        Raises:
            RequestInFlight, RequestIdReused: see `_claim`.
        """
        self._telemetry.observe_call(call)
        if not call.request_id:
            return await self._route(call, deadline_s)
        served = await self._claim(call)
        if served is not None:
            return served
        try:
            return await self._route(call, deadline_s)
        finally:
            await self._state.unclaim(call.claim_key)  # a no-op once its result is kept

    async def _claim(self, call: RouteCall) -> RouteResult | None:
        """Claims the call's request id, or finds the result of its first serving.

        Raises:
            RequestInFlight: a request with this id is still being served.
            RequestIdReused: the id was served for a different request.
        """
        stored = await self._state.claim(call.claim_key, call.fingerprint)
        if stored is None:
            return None
        if stored.fingerprint != call.fingerprint:
            raise RequestIdReused(call.request_id)
        return decode_result(stored)

    async def _route(self, call: RouteCall, deadline_s: float) -> RouteResult:
        catalog = self.catalog
        plan, lease = await self._planner.plan(call, catalog)
        records: list[AttemptRecord] = []
        telemetry = self._telemetry
        telemetry.observe_plan(plan, records)

        async def start(held: Lease) -> Completion:
            return await complete_once(
                held.option.deployment,
                upstream_request(plan, held),
                telemetry,
                held.holding.amount_nano_usd,
            )

        async def discard(_: Completion) -> None:
            return None

        attempts = Attempts(self._planner, catalog.config.retries, self._clock, self._rng)
        try:
            completion, lease, record = await attempts.first_result(
                plan, lease, start, discard, records, deadline_s
            )
        except AttemptsFailed as failed:
            raise upstream_failure(failed.error, failed.deployment.name) from None
        deployment = lease.option.deployment
        telemetry.observe_served(deployment)
        counted = None
        if completion.usage is None:
            counted = Usage(
                lease.option.input_tokens, await count_text(deployment.counter, completion.text)
            )
        usage, cost, implausible = _charge(lease, completion.usage, counted)
        records.append(
            AttemptRecord(record.model, record.outcome, record.latency_s, cost, record.hedge)
        )
        result = RouteResult(
            output=completion.text,
            finish_reason=completion.finish_reason,
            usage=usage,
            cost_nano_usd=cost,
            reserved_nano_usd=lease.holding.amount_nano_usd,
            budget_remaining_nano_usd=0,  # known once committed
            model_used=deployment.name,
            provider=deployment.config.provider.value,
            request_id=plan.request_id,
            model_version=deployment.config.version,
            task=plan.task,
            attempts=tuple(records),
            candidates=plan.scores,
        )
        remaining = await self._planner.settle(
            plan,
            lease,
            usage,
            cost,
            "succeeded",
            len(records),
            result if call.request_id else None,
            implausible,
        )
        return dataclasses.replace(result, budget_remaining_nano_usd=remaining)

    def stream(
        self, call: RouteCall, deadline_s: float
    ) -> AsyncGenerator[StreamStarted | str | StreamFinished, None]:
        """Serves one request as a StreamStarted, text chunks, then a StreamFinished.

        Consume inside `contextlib.aclosing`: closing early settles the delivered part.

        Raises:
            RequestAlreadyServed: the request id was served before; a stream
                can't be replayed, so this carries the first one's accounting.
            RequestInFlight, RequestIdReused: see `_claim`.
        """
        self._telemetry.observe_call(call)
        if call.request_id:
            return self._stream_once(call, deadline_s)
        return self._stream(call, deadline_s)  # no extra hop per chunk

    async def _stream_once(
        self, call: RouteCall, deadline_s: float
    ) -> AsyncGenerator[StreamStarted | str | StreamFinished, None]:
        """A stream with a client request id: served at most once."""
        served = await self._claim(call)
        if served is not None:
            raise RequestAlreadyServed(
                served.request_id,
                served.model_used,
                served.usage.input_tokens,
                served.usage.output_tokens,
                served.cost_nano_usd,
                served.budget_remaining_nano_usd,
            )
        try:
            async with aclosing(self._stream(call, deadline_s)) as events:
                async for event in events:
                    yield event
        finally:
            await self._state.unclaim(call.claim_key)  # a no-op once its result is kept

    async def _stream(
        self, call: RouteCall, deadline_s: float
    ) -> AsyncGenerator[StreamStarted | str | StreamFinished, None]:
        catalog = self.catalog
        plan, lease = await self._planner.plan(call, catalog)
        records: list[AttemptRecord] = []
        telemetry = self._telemetry
        telemetry.observe_plan(plan, records)

        async def start(held: Lease) -> tuple[Stream, str | StreamEnd]:
            items = stream_once(
                held.option.deployment,
                upstream_request(plan, held),
                telemetry,
                held.holding.amount_nano_usd,
            )
            return items, await anext(items)

        async def discard(opened: tuple[Stream, str | StreamEnd]) -> None:
            await opened[0].aclose()

        attempts = Attempts(self._planner, catalog.config.retries, self._clock, self._rng)
        try:
            (items, item), lease, record = await attempts.first_result(
                plan, lease, start, discard, records, deadline_s
            )
        except AttemptsFailed as failed:
            raise upstream_failure(failed.error, failed.deployment.name) from None
        deployment = lease.option.deployment
        telemetry.observe_served(deployment, (*records, record))
        delivered = RunningCount(deployment.counter)
        settled = False
        try:
            async with aclosing(items):
                telemetry.observe_first_output()
                yield StreamStarted(
                    model_used=deployment.name,
                    provider=deployment.config.provider.value,
                    request_id=plan.request_id,
                    reserved_nano_usd=lease.holding.amount_nano_usd,
                    model_version=deployment.config.version,
                    task=plan.task,
                    attempts=(*records, record),
                    candidates=plan.scores,
                )
                while isinstance(item, str):
                    yield item
                    delivered.add(item)  # its write completed: the caller has it
                    item = await anext(items)
            end = item
            counted = None if end.usage is not None else self._counted_usage(lease, delivered)
            usage, cost, implausible = _charge(lease, end.usage, counted)
            settled = True
            result = None
            if call.request_id:
                result = RouteResult(
                    output="",  # a stream is not replayed, only its accounting
                    finish_reason=end.finish_reason,
                    usage=usage,
                    cost_nano_usd=cost,
                    reserved_nano_usd=lease.holding.amount_nano_usd,
                    budget_remaining_nano_usd=0,
                    model_used=deployment.name,
                    provider=deployment.config.provider.value,
                    request_id=plan.request_id,
                    model_version=deployment.config.version,
                    task=plan.task,
                )
            remaining = await self._planner.settle(
                plan, lease, usage, cost, "succeeded", len(records) + 1, result, implausible
            )
            yield StreamFinished(
                usage=usage,
                cost_nano_usd=cost,
                budget_remaining_nano_usd=remaining,
                finish_reason=end.finish_reason,
            )
        except UpstreamError as error:
            if delivered.chunks:
                raise StreamInterrupted(
                    f"the upstream failed after output was delivered: {error.message}",
                    model=deployment.name,
                ) from None
            raise upstream_failure(error, deployment.name) from None
        finally:
            if not settled:
                await self._settle_interrupted(plan, lease, delivered, len(records) + 1)

    async def _settle_interrupted(
        self, plan: Plan, lease: Lease, delivered: RunningCount, attempts: int
    ) -> None:
        if not delivered.chunks:
            self._planner.release(lease)
            return
        usage = self._counted_usage(lease, delivered)
        price = lease.option.deployment.config.price
        cost = min(
            price.cost_nano_usd(usage.input_tokens, usage.output_tokens),
            lease.holding.amount_nano_usd,
        )
        await self._planner.settle(plan, lease, usage, cost, "interrupted", attempts)

    @staticmethod
    def _counted_usage(lease: Lease, delivered: RunningCount) -> Usage:
        return Usage(lease.option.input_tokens, delivered.tokens())


def _charge(
    lease: Lease, reported: ReportedUsage, counted: Usage | None
) -> tuple[Usage, int, ImplausibleUsage | None]:
    """What a successful request is charged: the usage charged for, its cost,
    and the implausible report it replaced, if any.

    The reported usage arrives judged (attempts.py). An implausible report is
    charged the reservation, as the worst case it was reserved for: the
    counted input and the output cap. Without a report the counted usage
    (which the caller passes exactly then) is charged, never more than was
    reserved (a count is an estimate).
    """
    option = lease.option
    reserved_nano_usd = lease.holding.amount_nano_usd
    if isinstance(reported, ImplausibleUsage):
        return Usage(option.input_tokens, option.max_output_tokens), reserved_nano_usd, reported
    usage = reported if reported is not None else counted
    assert usage is not None, "a request without reported usage is charged its count"
    price = option.deployment.config.price
    cost = price.cost_nano_usd(usage.input_tokens, usage.output_tokens)
    return usage, min(cost, reserved_nano_usd), None
