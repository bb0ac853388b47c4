"""The core path: plan, attempt (with retries, fallbacks and hedges), settle.

Settlement rules, for every way a request can end:
- success: commit the provider-reported cost (or, without reported usage, the
  cost of the counted input and the counted delivered output);
- failure or cancellation before any output reached the caller: release the
  reservation whole, nothing is charged;
- failure or cancellation after output reached the caller: commit the counted
  input and delivered output, never more than was reserved.
A lease is always either settled or released, whatever interrupts the request,
so the reserved totals of budgets and limit pools return to zero. Every
settlement leaves a record in the ledger, durable before the spend is reported.

The caller's deadline is enforced by the servicer around these calls; here it
arrives as cancellation, which settles like any other interruption, and as a
value that bounds retry backoffs. A request whose answer is already in hand
is charged even if its deadline passes while the ledger makes that durable:
the provider did the work.

Each request reads the current catalog once; a config reload swaps it for new
requests while those in flight finish on the one they started with.
"""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Sequence
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
    RouteCall,
    RouteResult,
    StreamEnd,
    StreamFinished,
    StreamStarted,
    Usage,
)
from faregate_server.errors import StreamInterrupted, upstream_failure
from faregate_server.planner import Lease, Plan, Planner
from faregate_server.providers import UpstreamError

Stream = AsyncGenerator[str | StreamEnd, None]


class Gateway:
    """Serves validated requests; knows nothing of gRPC."""

    def __init__(
        self, catalog: Catalog, planner: Planner, clock: Clock, rng: random.Random
    ) -> None:
        self.catalog = catalog
        """The current catalog; replaced whole by a config reload."""
        self._planner = planner
        self._clock = clock
        self._rng = rng

    async def route(self, call: RouteCall, deadline_s: float) -> RouteResult:
        """Serves one request whole; deadline_s is on the event loop's clock."""
        catalog = self.catalog
        plan, lease = await self._planner.plan(call, catalog)
        records: list[AttemptRecord] = []

        async def start(held: Lease) -> Completion:
            return await complete_once(held.option.deployment, upstream_request(plan, held))

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
        usage = completion.usage or Usage(
            lease.option.input_tokens, deployment.counter.count_text(completion.text)
        )
        cost = deployment.config.price.cost_nano_usd(usage.input_tokens, usage.output_tokens)
        remaining, spend = await self._planner.settle(plan, lease, usage, cost, "succeeded")
        await self._planner.record(spend)
        records.append(
            AttemptRecord(record.model, record.outcome, record.latency_s, cost, record.hedge)
        )
        return RouteResult(
            output=completion.text,
            finish_reason=completion.finish_reason,
            usage=usage,
            cost_nano_usd=cost,
            reserved_nano_usd=lease.reservation.amount_nano_usd,
            budget_remaining_nano_usd=remaining,
            model_used=deployment.name,
            provider=deployment.config.provider.value,
            request_id=plan.request_id,
            model_version=deployment.config.version,
            task=plan.task,
            attempts=tuple(records),
            candidates=plan.scores,
        )

    async def stream(
        self, call: RouteCall, deadline_s: float
    ) -> AsyncGenerator[StreamStarted | str | StreamFinished, None]:
        """Serves one request as a StreamStarted, text chunks, then a StreamFinished.

        Consume inside `contextlib.aclosing`: closing early settles the delivered part.
        """
        catalog = self.catalog
        plan, lease = await self._planner.plan(call, catalog)
        records: list[AttemptRecord] = []

        async def start(held: Lease) -> tuple[Stream, str | StreamEnd]:
            items = stream_once(held.option.deployment, upstream_request(plan, held))
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
        delivered: list[str] = []
        settled = False
        try:
            async with aclosing(items):
                yield StreamStarted(
                    model_used=deployment.name,
                    provider=deployment.config.provider.value,
                    request_id=plan.request_id,
                    reserved_nano_usd=lease.reservation.amount_nano_usd,
                    model_version=deployment.config.version,
                    task=plan.task,
                    attempts=(*records, record),
                    candidates=plan.scores,
                )
                while isinstance(item, str):
                    delivered.append(item)
                    yield item
                    item = await anext(items)
            end = item
            usage = end.usage or self._counted_usage(lease, delivered)
            cost = deployment.config.price.cost_nano_usd(usage.input_tokens, usage.output_tokens)
            remaining, spend = await self._planner.settle(plan, lease, usage, cost, "succeeded")
            settled = True
            await self._planner.record(spend)
            yield StreamFinished(
                usage=usage,
                cost_nano_usd=cost,
                budget_remaining_nano_usd=remaining,
                finish_reason=end.finish_reason,
            )
        except UpstreamError as error:
            if delivered:
                raise StreamInterrupted(
                    f"the upstream failed after output was delivered: {error.message}",
                    model=deployment.name,
                ) from None
            raise upstream_failure(error, deployment.name) from None
        finally:
            if not settled:
                await self._settle_interrupted(plan, lease, delivered)

    async def _settle_interrupted(self, plan: Plan, lease: Lease, delivered: Sequence[str]) -> None:
        if not delivered:
            await self._planner.release(lease)
            return
        usage = self._counted_usage(lease, delivered)
        price = lease.option.deployment.config.price
        cost = min(
            price.cost_nano_usd(usage.input_tokens, usage.output_tokens),
            lease.reservation.amount_nano_usd,
        )
        _, spend = await self._planner.settle(plan, lease, usage, cost, "interrupted")
        await self._planner.record(spend)

    @staticmethod
    def _counted_usage(lease: Lease, delivered: Sequence[str]) -> Usage:
        output_tokens = lease.option.deployment.counter.count_text("".join(delivered))
        # A chunk is at least one token even when the counter says less.
        return Usage(lease.option.input_tokens, max(output_tokens, len(delivered)))
