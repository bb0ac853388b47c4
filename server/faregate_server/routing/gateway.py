"""The core path, one lifecycle for a whole answer and a stream alike.

Every request goes plan → attempts → routing decision → output → usage →
cost → settle: the planner picks the options, the settlement (settlement.py)
leases the first, attempts (with retries, fallbacks and hedges) get to a
first result, and the decision of who serves is made once from it. Route
and StreamRoute differ only in how the output reaches the caller: whole, or
chunk by chunk after the decision; the cost rules and the settling are the
settlement's.

A chunk counts as delivered once it is handed to the consumer: the servicer
writes each one before it asks for the next, and its writes complete only
as gRPC's flow control lets them out to the caller, so the upstream is read
no faster than the caller takes messages. The one write a deadline or a
shutdown cut interrupts is charged too, as gRPC may still deliver it. The
delivered text is counted as it goes (`RunningCount`), never kept whole.

A stream never spends past its reservation. Its delivered output (text, and
every fragment a model generates) is checked against the attempt's reserved
output, the `max_output_tokens` sent upstream, as it is counted: once the
count has reached it, the next output is not relayed. The upstream is closed
at once (its connection dropped), and the stream finishes with finish reason
LENGTH, charged the counted input and the delivered output, no more than its
cap (settlement.py). The chunk that crosses the cap is relayed whole, so the
caller may get up to one chunk more than the cap, never charged. An honest
upstream ends at its cap by itself: its end comes next, not more output, so
it is never cut.

A lease is always either settled or released, whatever interrupts the request,
so the reserved totals of budgets and limit pools return to zero; a stream's
commit never exceeds its reservation, whatever an upstream says (a whole
answer's believable report is charged in full: settlement.py). Every
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
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Generic, TypeVar

from faregate_server.clock import Clock
from faregate_server.content import AnswerDelta, ToolCallDelta
from faregate_server.domain import (
    AttemptRecord,
    Completion,
    FinishReason,
    ReportedSoFar,
    RouteCall,
    RouteResult,
    RoutingDecision,
    StreamEnd,
    StreamFinished,
)
from faregate_server.errors import (
    RequestAlreadyServed,
    RequestIdReused,
    StreamInterrupted,
)
from faregate_server.routing.attempts import (
    Attempts,
    AttemptsFailed,
    complete_once,
    stream_once,
    upstream_request,
)
from faregate_server.routing.hooks import NO_HOOKS, Hooks
from faregate_server.routing.planner import Plan, Planner
from faregate_server.routing.scope import CallScope
from faregate_server.routing.settlement import (
    Charge,
    Lease,
    Settlement,
    charge,
    counted_usage,
    usage_so_far,
)
from faregate_server.state.replay import decode_result
from faregate_server.state.store import StateStore
from faregate_server.upstream.catalog import Catalog, Deployment
from faregate_server.upstream.providers import UpstreamError
from faregate_server.upstream.providers.base import ProviderItem, upstream_failure
from faregate_server.upstream.tokens import INLINE_COUNT_CHARS, RunningCount

logger = logging.getLogger(__name__)

T = TypeVar("T")
Stream = AsyncGenerator[ProviderItem, None]
StreamOpening = tuple[Stream, ProviderItem, ReportedSoFar]
"""An upstream stream, its first item, and where its adapter keeps the usage
reported before the end."""
StreamItem = RoutingDecision | str | AnswerDelta | StreamFinished
"""What a stream yields: its decision, each text chunk and tool-call,
reasoning and refusal fragment, then its StreamFinished (with the tool calls
the fragments made up, assembled)."""


@dataclass(frozen=True, slots=True)
class _Serving(Generic[T]):
    """A request at its first result: what it was planned as, the lease that
    got the result, the result, and the decision of who serves."""

    plan: Plan
    lease: Lease
    first: T
    decision: RoutingDecision


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
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        self.catalog = catalog
        """The current catalog; replaced whole by a config reload."""
        self._planner = planner
        self._settlement = settlement
        self._state = state
        self._clock = clock
        self._rng = rng
        self._hooks = hooks

    async def route(self, call: RouteCall, scope: CallScope | float) -> RouteResult:
        """Serves one request whole, within its call's `scope`.

        A bare deadline (the event loop's clock) stands for
        `CallScope.unobserved(deadline_s)`: the end-to-end tests of
        tests/e2e/test_resilience.py call the gateway directly that way, and
        that suite stays unchanged.

        A request whose client request id was served before gets that
        result again, neither served nor charged a second time.

        Raises:
            RequestInFlight, RequestIdReused: see `_claim`.
        """
        if not isinstance(scope, CallScope):
            scope = CallScope.unobserved(scope)
        if not call.request_id:
            return await self._route(call, scope)
        served = await self._claim(call)
        if served is not None:
            return served
        try:
            return await self._route(call, scope)
        finally:
            await self._state.unclaim(call.claim_key)  # a no-op once its result is kept

    def stream(self, call: RouteCall, scope: CallScope | float) -> AsyncGenerator[StreamItem, None]:
        """Serves one request as its RoutingDecision, text chunks and other
        fragments (AnswerDelta), then a StreamFinished, within its call's
        `scope` (or, as for `route`, a bare deadline, for
        tests/e2e/test_resilience.py).

        Consume inside `contextlib.aclosing`: closing early settles the delivered part.

        Raises:
            RequestAlreadyServed: the request id was served before; a stream
                can't be replayed, so this carries the first one's accounting.
            RequestInFlight, RequestIdReused: see `_claim`.
        """
        if not isinstance(scope, CallScope):
            scope = CallScope.unobserved(scope)
        if call.request_id:
            return self._stream_once(call, scope)
        return self._stream(call, scope)  # no extra hop per chunk

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

    async def _stream_once(
        self, call: RouteCall, scope: CallScope
    ) -> AsyncGenerator[StreamItem, None]:
        """A stream with a client request id: served at most once."""
        served = await self._claim(call)
        if served is not None:
            raise RequestAlreadyServed(
                served.decision.request_id,
                served.decision.model,
                served.usage.input_tokens,
                served.usage.output_tokens,
                served.cost_nano_usd,
                served.budget_remaining_nano_usd,
            )
        try:
            async with aclosing(self._stream(call, scope)) as events:
                async for event in events:
                    yield event
        finally:
            await self._state.unclaim(call.claim_key)  # a no-op once its result is kept

    # -- the lifecycle: the two ways output is relayed -----------------------

    async def _route(self, call: RouteCall, scope: CallScope) -> RouteResult:
        """A whole answer: relayed in one piece once it is in hand."""
        serving = await self._serve(call, scope, self._complete, _keep)
        plan, lease, completion = serving.plan, serving.lease, serving.first
        counted = None
        if completion.usage is None:
            attempts = len(serving.decision.attempts)
            counted = await self._settlement.count_answer_or_settle(
                plan, lease, _generated_text(completion), attempts, scope
            )
        charged = charge(lease, completion.usage, counted)
        decision = serving.decision.charged(charged.cost_nano_usd)
        text, finish_reason = completion.text, completion.finish_reason
        kept = None
        if call.request_id:
            kept = _result(decision, charged, text, finish_reason, completion=completion)
        remaining = await self._settle(serving, charged, kept, scope)
        return _result(decision, charged, text, finish_reason, remaining, completion)

    async def _stream(self, call: RouteCall, scope: CallScope) -> AsyncGenerator[StreamItem, None]:
        """A stream: the decision, then each chunk as the caller takes it."""
        serving = await self._serve(call, scope, self._open_stream, _close_stream)
        plan, lease, decision = serving.plan, serving.lease, serving.decision
        items, item, reported = serving.first
        deployment = lease.option.deployment
        delivered = RunningCount(deployment.counter)
        # Past this count, the stream is past its reserved output whatever the
        # model's own count (`past_cap`): more is not relayed (`_cut`).
        cut_at = deployment.counter.past_cap(lease.option.max_output_tokens)
        settled = False
        try:
            async with aclosing(items):
                scope.observer.first_output()
                yield decision
                while True:
                    # Counted as it is handed over: once gRPC takes the write
                    # it may deliver it, even if a cut or the deadline ends
                    # the call before the write completes. Text first: it is
                    # nearly every item, and costs one isinstance as it did
                    # before streams carried anything else. More output once
                    # the count reached the cap is not relayed (`_cut`).
                    if isinstance(item, str):
                        output = item
                    elif isinstance(item, StreamEnd):
                        break
                    else:
                        # A tool call's name and arguments, reasoning and a
                        # refusal are output the model generated: counted as
                        # text is, for a stream whose usage is missing.
                        output = _delta_text(item)
                    if delivered.reached(cut_at):
                        item = await self._cut(items, deployment, lease)
                        break
                    if len(output) <= INLINE_COUNT_CHARS:
                        delivered.add(output)
                    else:
                        await delivered.add_long(output)
                    yield item
                    item = await anext(items)
            end = item
            counted = None
            if end.usage is None:
                counted = usage_so_far(lease, counted_usage(lease, delivered.tokens()), reported)
            charged = charge(lease, end.usage, counted)
            settled = True
            kept = None
            if call.request_id:
                # A stream is not replayed, only its accounting: kept is who
                # served it and what it was charged, not its output, its
                # attempts or its candidates.
                accounted = dataclasses.replace(decision, attempts=(), candidates=())
                kept = _result(accounted, charged, "", end.finish_reason)
            remaining = await self._settle(serving, charged, kept, scope)
            yield StreamFinished(
                usage=charged.usage,
                cost_nano_usd=charged.cost_nano_usd,
                budget_remaining_nano_usd=remaining,
                finish_reason=end.finish_reason,
                tool_calls=end.tool_calls,
                reasoning=end.reasoning,
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
                await self._settlement.settle_interrupted(
                    plan, lease, delivered, reported, len(decision.attempts), scope
                )

    async def _cut(self, items: Stream, deployment: Deployment, lease: Lease) -> StreamEnd:
        """Ends a stream whose upstream went on past its reserved output: the
        upstream closed at once, and the end it is settled as (LENGTH, with
        no usage, so it is charged what was delivered and what the provider
        had reported, capped)."""
        await items.aclose()
        self._hooks.stream_cut(deployment)
        logger.warning(
            "model %s streamed past its output cap of %d tokens: cut there, and charged no more",
            deployment.name,
            lease.option.max_output_tokens,
        )
        return StreamEnd(FinishReason.LENGTH, None)

    # -- the lifecycle: the steps both share ---------------------------------

    async def _serve(
        self,
        call: RouteCall,
        scope: CallScope,
        start: Callable[[Plan, Lease], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]],
    ) -> _Serving[T]:
        """Plans the request, leases its first option, runs its attempts up
        to a first result (`start` makes one attempt's, `discard` gives up a
        loser's), and decides who serves.

        Raises:
            FaregateError: planning or the first lease failed, or every attempt
                allowed did (mapped from the last upstream error).
        """
        catalog = self.catalog
        plan = await self._planner.plan(call, catalog)
        # Nothing may suspend between the selection and the first lease: the
        # selection saw an unprobed model as optimistic, and the settlement
        # claims its probe before its own first await, so no other request
        # selects in between and sees the model unprobed too (a burst would
        # pile onto it). Awaiting a coroutine that returns gives the event
        # loop no turn, and the planner's selection is its last step.
        lease = await self._settlement.first_lease(plan)
        records: list[AttemptRecord] = []
        scope.observer.planned(
            plan.request_id, plan.route.name, plan.options[0].deployment, records
        )

        async def attempt(held: Lease) -> T:
            return await start(plan, held)

        attempts = Attempts(self._settlement, catalog.config.retries, self._clock, self._rng)
        try:
            first, lease, record = await attempts.first_result(
                plan, lease, attempt, discard, records, scope.deadline_s
            )
        except AttemptsFailed as failed:
            raise upstream_failure(failed.error, failed.deployment.name) from None
        deployment = lease.option.deployment
        decision = RoutingDecision(
            request_id=plan.request_id,
            model=deployment.name,
            provider=deployment.config.provider.value,
            model_version=deployment.config.version,
            reserved_nano_usd=lease.holding.amount_nano_usd,
            task=plan.task,
            attempts=(*records, record),
            candidates=plan.scores,
        )
        scope.observer.served(decision)
        return _Serving(plan, lease, first, decision)

    async def _settle(
        self,
        serving: _Serving[T],
        charged: Charge,
        kept: RouteResult | None,
        scope: CallScope,
    ) -> int:
        """Settles a request that got its answer, keeping `kept` (for a client
        `request_id`) for its retries; returns the least money left in its
        budgets. The caller counts the lease settled before this is awaited."""
        return await self._settlement.settle(
            serving.plan,
            serving.lease,
            charged,
            "succeeded",
            len(serving.decision.attempts),
            scope,
            kept,
        )

    async def _complete(self, plan: Plan, lease: Lease) -> Completion:
        return await complete_once(
            lease.option.deployment,
            upstream_request(plan, lease),
            self._hooks,
            lease.holding.amount_nano_usd,
            self._clock,
        )

    async def _open_stream(self, plan: Plan, lease: Lease) -> StreamOpening:
        reported = ReportedSoFar()
        items = stream_once(
            lease.option.deployment,
            upstream_request(plan, lease, reported),
            self._hooks,
            lease.holding.amount_nano_usd,
            self._clock,
        )
        return items, await anext(items), reported


def _result(
    decision: RoutingDecision,
    charged: Charge,
    output: str,
    finish_reason: FinishReason,
    budget_remaining_nano_usd: int = 0,
    completion: Completion | None = None,
) -> RouteResult:
    """The result of a request charged `charged`; the money its budgets have
    left is known once it is committed (0 until then, as it is kept). A whole
    answer's `completion` gives it its tool calls, refusal and reasoning."""
    answer = completion if completion is not None else _NO_ANSWER
    return RouteResult(
        decision=decision,
        output=output,
        finish_reason=finish_reason,
        usage=charged.usage,
        cost_nano_usd=charged.cost_nano_usd,
        budget_remaining_nano_usd=budget_remaining_nano_usd,
        tool_calls=answer.tool_calls,
        refusal=answer.refusal,
        reasoning=answer.reasoning,
    )


_NO_ANSWER = Completion("", FinishReason.UNSPECIFIED, None)
"""A stream's kept result carries no answer, only its accounting."""


def _generated_text(completion: Completion) -> str:
    """Everything a whole answer's model generated, as text to count: its
    text, and any tool calls' names and arguments, refusal and reasoning."""
    if not (completion.tool_calls or completion.refusal or completion.reasoning):
        return completion.text
    return "".join(
        (
            completion.text,
            *(call.name + call.arguments_json for call in completion.tool_calls),
            completion.refusal,
            *(block.text for block in completion.reasoning),
        )
    )


def _delta_text(delta: AnswerDelta) -> str:
    """The generated text a stream fragment beyond text carries."""
    if isinstance(delta, ToolCallDelta):
        return delta.name + delta.arguments_json
    return delta.text


async def _keep(_: Completion) -> None:
    """A whole answer that lost a race holds nothing open."""


async def _close_stream(opened: StreamOpening) -> None:
    await opened[0].aclose()
