"""The core path: plan, attempt (with retries, fallbacks and hedges), settle.

Settlement rules, for every way a request can end:
- success: commit the provider-reported cost (or, without reported usage, the
  cost of the counted input and the counted delivered output, never more
  than was reserved);
- success with implausible reported usage (upstream/usage.py): commit the reservation,
  never the reported figure, and record the report with a flag;
- failure or cancellation before any output reached the caller: release the
  reservation whole, nothing is charged;
- failure or cancellation after output reached the caller: commit the counted
  input and delivered output, never more than was reserved.
A chunk counts as delivered once it is handed to the consumer: the servicer
writes each one before it asks for the next, and its writes complete only
as gRPC's flow control lets them out to the caller, so the upstream is read
no faster than the caller takes messages. The one write a deadline or a
shutdown cut interrupts is charged too, as gRPC may still deliver it. The
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

from faregate_server.clock import Clock
from faregate_server.domain import (
    AttemptRecord,
    Completion,
    RouteCall,
    RouteResult,
    StreamEnd,
    StreamFinished,
    StreamStarted,
)
from faregate_server.errors import (
    RequestAlreadyServed,
    RequestIdReused,
    StreamInterrupted,
    upstream_failure,
)
from faregate_server.routing.attempts import (
    Attempts,
    AttemptsFailed,
    complete_once,
    stream_once,
    upstream_request,
)
from faregate_server.routing.planner import Planner
from faregate_server.routing.settlement import (
    Lease,
    Settlement,
    charge,
    counted_usage,
)
from faregate_server.state.replay import decode_result
from faregate_server.state.store import StateStore
from faregate_server.telemetry.observation import NO_TELEMETRY, Telemetry
from faregate_server.upstream.catalog import Catalog
from faregate_server.upstream.providers import UpstreamError
from faregate_server.upstream.tokens import INLINE_COUNT_CHARS, RunningCount

Stream = AsyncGenerator[str | StreamEnd, None]


class Gateway:
    """Serves validated requests; knows nothing of gRPC."""

    def __init__(
        self,
        catalog: Catalog,
        planner: Planner,
        settlement: Settlement,
        state: StateStore,
        clock: Clock,
        rng: random.Random,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self.catalog = catalog
        """The current catalog; replaced whole by a config reload."""
        self._planner = planner
        self._settlement = settlement
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
        plan = await self._planner.plan(call, catalog)
        lease = await self._settlement.first_lease(plan)
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

        attempts = Attempts(self._settlement, catalog.config.retries, self._clock, self._rng)
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
            counted = await self._settlement.count_answer(
                plan, lease, completion.text, len(records) + 1
            )
        charged = charge(lease, completion.usage, counted)
        usage, cost = charged.usage, charged.cost_nano_usd
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
        remaining = await self._settlement.settle(
            plan, lease, charged, "succeeded", len(records), result if call.request_id else None
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
        plan = await self._planner.plan(call, catalog)
        lease = await self._settlement.first_lease(plan)
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

        attempts = Attempts(self._settlement, catalog.config.retries, self._clock, self._rng)
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
                    # Counted as it is handed over: once gRPC takes the write
                    # it may deliver it, even if a cut or the deadline ends
                    # the call before the write completes.
                    if len(item) <= INLINE_COUNT_CHARS:
                        delivered.add(item)
                    else:
                        await delivered.add_long(item)
                    yield item
                    item = await anext(items)
            end = item
            counted = None if end.usage is not None else counted_usage(lease, delivered.tokens())
            charged = charge(lease, end.usage, counted)
            usage, cost = charged.usage, charged.cost_nano_usd
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
            remaining = await self._settlement.settle(
                plan, lease, charged, "succeeded", len(records) + 1, result
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
                await self._settlement.settle_interrupted(plan, lease, delivered, len(records) + 1)
