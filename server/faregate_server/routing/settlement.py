"""The money path: a request's lease, from reservation to settlement, and its cost.

A `Lease` is an option of a plan with its money held: the worst case
reserved from every budget the request draws on and the projected draw from
the limit pools, all atomically (state/store.py). `Settlement` is the one
owner of leases: it takes them (the first for a plan, further ones for
retries, fallbacks and hedges), releases them, and settles them, building the
spend record the ledger keeps. Every lease is either settled or released,
whatever interrupts the request, so the reserved totals of budgets and limit
pools return to zero.

The cost rules, for every way a request can end:
- success: the provider-reported usage is charged at the model's price (each
  kind of token, cached, cache-written, plain input and output, at its rate); without
  a report, the counted input and the counted output (no more than the output
  cap: an upstream that ignored the cap is charged the cap), never more than
  was reserved, as a count is an estimate;
- a whole answer's believable report costing more than was reserved (the
  input counted short, a server that ignored the cap but reported within the
  bounds upstream/usage.py allows) is the bill: charged in full, no longer
  capped, so the ledger equals what the provider bills. The budget is
  charged past its reservation (and its remaining money may go below zero,
  which refuses its next reservation); the record keeps both the reservation
  and the cost (the overrun is their difference), and each overrun is
  counted (`Hooks.overrun`) and logged at warning. One request can overrun
  by at most its estimate's error: the plausibility bounds cap the input at
  the context window and the output at the cap sent upstream (see the
  README's "Budgets that hold");
- a stream's charge never exceeds its reservation: faregate relays it and
  cuts it when the delivered output reaches the reserved output (gateway.py),
  so a reported cost over the reservation (the input counted short) is
  judged over the reservation (upstream/usage.py) and charged the
  reservation, with the report recorded beside it;
- success with implausible reported usage (upstream/usage.py): the reservation,
  as the worst case it was reserved for (the counted input and the output
  cap), never the reported figure; the report is recorded beside the charge;
- interrupted after output reached the caller: the counted input and the
  delivered output, each raised to what the provider had already reported
  (Anthropic's `message_start` has the whole input; running totals of the
  output), no more than was reserved, recorded as "interrupted";
  an answer in hand whose count is interrupted is charged at its output cap,
  the most the count could come to;
- failed or interrupted before any output: released whole, nothing charged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from faregate_server.clock import Clock
from faregate_server.domain import (
    ImplausibleUsage,
    ReportedSoFar,
    ReportedUsage,
    RouteResult,
    Usage,
)
from faregate_server.errors import BudgetExhausted, LimitExhausted
from faregate_server.routing.hooks import NO_HOOKS, Hooks
from faregate_server.routing.planner import Plan
from faregate_server.routing.scope import CallScope
from faregate_server.routing.selection import Option
from faregate_server.state.ledger import SpendRecord
from faregate_server.state.store import Holding, StateStore
from faregate_server.upstream.catalog import Deployment
from faregate_server.upstream.tokens import RunningCount, count_text
from faregate_server.upstream.usage import judge_usage, usage_cost_nano_usd

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lease:
    """An option with the request's worst case held on its budgets and limit pools."""

    option: Option
    holding: Holding
    probe: bool = False
    """It holds its model's optimistic probe (see `LatencyTracker.claim_probe`),
    given back when the lease is released or settled."""


@dataclass(frozen=True, slots=True)
class Charge:
    """What a request is charged: the usage charged for and its cost."""

    usage: Usage
    cost_nano_usd: int
    implausible: ImplausibleUsage | None = None
    """The upstream's report that was not believed, recorded beside the charge."""


def counted_usage(lease: Lease, output_tokens: int) -> Usage:
    """The usage faregate counted itself: the counted input and output, the
    output no more than its cap (an upstream that ignored the cap is charged
    the cap), so the record, the charge and the limit pools' draw agree."""
    option = lease.option
    return Usage(option.input_tokens, min(output_tokens, option.max_output_tokens))


def charge(lease: Lease, reported: ReportedUsage, counted: Usage | None) -> Charge:
    """What a lease is charged for a usage: an answer's, reported or counted,
    or the counted part of a stream or a count that was cut short.

    The reported usage arrives judged (attempts.py). An implausible report is
    charged the reservation, as the worst case it was reserved for: the
    counted input and the output cap. A believable report is charged in full,
    past the reservation if it costs more (an overrun: see the module's
    rules). Without a report the counted usage (which the caller passes
    exactly then) is charged, never more than was reserved (a count is an
    estimate).
    """
    option = lease.option
    reserved_nano_usd = lease.holding.amount_nano_usd
    if isinstance(reported, ImplausibleUsage):
        worst = Usage(option.input_tokens, option.max_output_tokens)
        return Charge(worst, reserved_nano_usd, reported)
    usage = reported if reported is not None else counted
    assert usage is not None, "a request without reported usage is charged its count"
    cost = usage_cost_nano_usd(option.deployment.config.price, usage)
    # The capping policy: a report is the bill (a stream's was judged against
    # its reservation already); only a count is capped.
    if reported is None:
        cost = min(cost, reserved_nano_usd)
    return Charge(usage, cost)


def usage_so_far(lease: Lease, counted: Usage, reported: ReportedSoFar) -> Usage:
    """The usage a stream that ended without a report of it is charged (cut
    short, or cut by faregate at its output cap): faregate's count, raised to
    what the provider had already reported where it reported more (its
    input, cache counts and output so far, thinking included). A report that
    is not believable (upstream/usage.py: bad counts, over the context
    window or the output cap) is ignored: the count stands."""
    if reported.raw is None or reported.read is None:
        return counted
    option = lease.option
    model = option.deployment.config
    so_far = judge_usage(
        reported.read(reported.raw),
        model.context_window_tokens,
        option.max_output_tokens,
        model.price,
        None,
    )
    if not isinstance(so_far, Usage):
        return counted
    return dataclasses.replace(
        so_far,
        input_tokens=max(so_far.input_tokens, counted.input_tokens),
        output_tokens=max(so_far.output_tokens, counted.output_tokens),
    )


class Settlement:
    """Takes, releases and settles the leases of every request."""

    def __init__(self, state: StateStore, clock: Clock, hooks: Hooks = NO_HOOKS) -> None:
        """`clock` dates the spend records (its wall time)."""
        self._state = state
        self._clock = clock
        self._hooks = hooks

    async def first_lease(self, plan: Plan) -> Lease:
        """The lease on the first of the plan's options that the budgets and
        limit pools cover.

        Raises:
            BudgetExhausted: a budget covers no option (the cheapest refusal).
            LimitExhausted: only limit pools refused.
            BudgetNotFound, StateUnavailable: see `StateStore.reserve`.
        """
        lease = await self._lease_or_refusal(plan, plan.options)
        if isinstance(lease, Lease):
            return lease
        if lease is not None:
            raise lease
        draws = [option.draw for option in plan.options]
        raise LimitExhausted(plan.route.name, min(map(self._state.limits.retry_after_s, draws)))

    async def lease(self, plan: Plan, options: tuple[Option, ...]) -> Lease | None:
        """Leases the first of `options` whose budgets and limit pools have room."""
        lease = await self._lease_or_refusal(plan, options)
        return lease if isinstance(lease, Lease) else None

    async def _lease_or_refusal(
        self, plan: Plan, options: tuple[Option, ...]
    ) -> Lease | BudgetExhausted | None:
        """A lease on the first option with room; without one, why the cheapest
        option's budget refused it, or None when only limit pools refused."""
        refused: BudgetExhausted | None = None
        for option in options:
            latency = option.deployment.latency
            # Claimed before the reservation's await, in the step that chose
            # the option: requests selecting meanwhile see the model probed.
            probe = latency.claim_probe()
            holding = None
            try:
                with self._hooks.span("faregate.budget.reserve", option.deployment.name):
                    holding = await self._state.reserve(
                        plan.call.budget_keys,
                        option.worst_case_nano_usd,
                        option.deployment.config.draws,
                        option.draw,
                    )
            except BudgetExhausted as exhausted:
                if refused is None or exhausted.needed_nano_usd < refused.needed_nano_usd:
                    refused = exhausted
                continue
            finally:
                if probe and holding is None:
                    latency.end_probe()  # refused, or cancelled while reserving
            if holding is not None:
                return Lease(option, holding, probe)
        return refused

    def release(self, lease: Lease) -> None:
        """Frees a lease whole; never suspends, so cleanup can't be interrupted."""
        if lease.probe:
            lease.option.deployment.latency.end_probe()
        self._state.release(lease.holding)

    async def settle(
        self,
        plan: Plan,
        lease: Lease,
        charged: Charge,
        outcome: str,
        attempts: int,
        scope: CallScope,
        result: RouteResult | None = None,
    ) -> int:
        """Commits the charge and its draw, and makes the spend record durable.

        `result`, for a request with a client request id, is kept for its
        retries. Returns the least money left in the request's budgets. The
        caller must count the lease as settled before awaiting this: the
        store completes the commit even if the caller is cancelled meanwhile.
        This is the call's commit point (`scope.on_commit`, called before the
        spend is written): from here on a shutdown lets the call finish, as
        it is charged, so its caller gets its answer.
        """
        deployment = lease.option.deployment
        if lease.probe:
            deployment.latency.end_probe()
        scope.on_commit()
        usage = charged.usage
        implausible = charged.implausible
        record = SpendRecord(
            request_id=plan.request_id,
            time_s=self._clock.now_s(),
            budget_keys=plan.call.budget_keys,
            agent=plan.call.agent,
            model=deployment.name,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_input_tokens=usage.cache_write_input_tokens,
            cache_write_1h_input_tokens=usage.cache_write_1h_input_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            reserved_nano_usd=lease.holding.amount_nano_usd,
            cost_nano_usd=charged.cost_nano_usd,
            outcome=outcome,
            route=plan.route.name,
            model_version=deployment.config.version,
            attempts=attempts,
            principal=plan.call.principal,
            usage_flaw=implausible.flaw.value if implausible else "",
            reported_usage=implausible.reported if implausible else "",
        )
        tokens = usage.input_tokens + usage.output_tokens
        if charged.cost_nano_usd > record.reserved_nano_usd:
            self._overran(deployment, record)
        scope.observer.settled(usage, charged.cost_nano_usd)
        return await self._state.commit(
            lease.holding, charged.cost_nano_usd, tokens, record, result
        )

    def _overran(self, deployment: Deployment, record: SpendRecord) -> None:
        """Counts and logs a charge past its reservation (an overrun)."""
        overrun_nano_usd = record.cost_nano_usd - record.reserved_nano_usd
        self._hooks.overrun(deployment, overrun_nano_usd)
        logger.warning(
            "model %s cost %d nano-USD, %d more than its reservation of %d (request %s)",
            deployment.name,
            record.cost_nano_usd,
            overrun_nano_usd,
            record.reserved_nano_usd,
            record.request_id,
        )

    async def settle_interrupted(
        self,
        plan: Plan,
        lease: Lease,
        delivered: RunningCount,
        reported: ReportedSoFar,
        attempts: int,
        scope: CallScope,
    ) -> None:
        """Settles a stream cut short: released whole if nothing reached the
        caller, else charged the larger of faregate's count (the counted
        input, the delivered output) and what the provider had reported,
        count by count (`usage_so_far`), never more than was reserved."""
        if not delivered.chunks:
            self.release(lease)
            return
        counted = counted_usage(lease, delivered.tokens())
        charged = charge(lease, None, usage_so_far(lease, counted, reported))
        await self.settle(plan, lease, charged, "interrupted", attempts, scope)

    async def count_answer_or_settle(
        self, plan: Plan, lease: Lease, text: str, attempts: int, scope: CallScope
    ) -> Usage:
        """The counted usage of a whole answer that reported none, or, if
        the count is interrupted, the lease settled and the interruption
        re-raised.

        A long answer is counted in a worker thread. A request interrupted
        meanwhile (its deadline, its caller gone) is charged all the same, as
        its answer is in hand and the provider did the work: at its output
        cap, the most the count could come to. Its caller must then not
        settle or release the lease again.
        """
        try:
            output_tokens = await count_text(lease.option.deployment.counter, text)
        except BaseException:
            worst = counted_usage(lease, lease.option.max_output_tokens)
            charged = charge(lease, None, worst)
            await self.settle(plan, lease, charged, "interrupted", attempts, scope)
            raise
        return counted_usage(lease, output_tokens)
