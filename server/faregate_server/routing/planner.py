"""Turns a request into a plan: its route, task, ranked options, and leases.

A `Lease` is an option with its money held: the worst case reserved from
every budget the request draws on and the projected draw from the limit
pools, all atomically. The planner hands out the first lease at planning time
and further ones when an attempt fails and a retry is allowed; every lease is
either settled or released by the gateway.
"""

from __future__ import annotations

import itertools
import random
import secrets
from dataclasses import dataclass

from faregate_server.clock import Clock
from faregate_server.config.schema import RouteConfig
from faregate_server.domain import (
    CandidateScore,
    ImplausibleUsage,
    RouteCall,
    RouteResult,
    TaskKind,
    Usage,
)
from faregate_server.errors import (
    BudgetExhausted,
    BudgetNotFound,
    CandidatesUnavailable,
    FaregateError,
    LimitExhausted,
    ModelCannotServe,
    PoolSaturated,
)
from faregate_server.routing.selection import Option, Selection, Selector
from faregate_server.routing.tasks import classify_task
from faregate_server.rpc.drain import commit_point
from faregate_server.state.ledger import SpendRecord
from faregate_server.state.store import Holding, StateStore
from faregate_server.telemetry.observation import NO_TELEMETRY, Telemetry
from faregate_server.upstream.catalog import Catalog
from faregate_server.upstream.tokens import TokenCounter, count_messages, counts_inline


@dataclass(frozen=True, slots=True)
class Plan:
    request_id: str
    call: RouteCall
    route: RouteConfig
    task: TaskKind | None
    """None when the request named none and its route had one candidate."""
    options: tuple[Option, ...]
    """Feasible options, first choice first; one only when fallback is off."""
    scores: tuple[CandidateScore, ...]


@dataclass(frozen=True, slots=True)
class Lease:
    """An option with the request's worst case held on its budgets and limit pools."""

    option: Option
    holding: Holding
    probe: bool = False
    """It holds its model's optimistic probe (see `LatencyTracker.claim_probe`),
    given back when the lease is released or settled."""


class Planner:
    def __init__(
        self,
        state: StateStore,
        clock: Clock,
        rng: random.Random,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._state = state
        self._telemetry = telemetry
        self._clock = clock
        self._rng = rng
        # Request ids: random per process, counted within it; unique without
        # costing a random draw per request.
        self._id_prefix = secrets.token_hex(8)
        self._request_numbers = itertools.count()
        self._selectors: tuple[Catalog, Selector] | None = None

    def _selector(self, catalog: Catalog) -> Selector:
        """The selector for a catalog's routing settings, built once per catalog."""
        if self._selectors is None or self._selectors[0] is not catalog:
            selector = Selector(self._state.limits, catalog.config.routing, self._clock, self._rng)
            self._selectors = (catalog, selector)
        return self._selectors[1]

    async def plan(self, call: RouteCall, catalog: Catalog) -> tuple[Plan, Lease]:
        """Chooses the options for a request and leases the first that the budget covers.

        Raises:
            ModelNotFound, BudgetNotFound, ModelCannotServe, BudgetExhausted,
            PoolSaturated, LimitExhausted, CandidatesUnavailable.
        """
        route = catalog.resolve(call.model)
        for key in call.budget_keys:
            if key not in catalog.config.budgets:
                raise BudgetNotFound(key)
        with self._telemetry.span("faregate.select"):
            task = call.hints.task
            if task is None and (len(route.slots) > 1 or call.hints.explain):
                # The task only weighs candidates against each other: a route of
                # one is not worth classifying for.
                task = classify_task(call.messages)
            input_tokens = await _count_long_prompt(call, route, catalog)
            selection = self._selector(catalog).select(
                call, route, catalog.deployments, task, input_tokens
            )
        if not selection.options:
            raise _nothing_feasible(call, route, selection, catalog)
        options = selection.options
        if not (call.hints.fallback and catalog.is_route(call.model)):
            options = options[:1]
        plan = Plan(
            request_id=call.request_id or f"{self._id_prefix}{next(self._request_numbers):016x}",
            call=call,
            route=route,
            task=task,
            options=options,
            scores=selection.scores,
        )
        lease = await self._lease_or_refusal(plan, options)
        if isinstance(lease, Lease):
            return plan, lease
        if lease is not None:
            raise lease
        draws = [option.draw for option in options]
        raise LimitExhausted(route.name, min(map(self._state.limits.retry_after_s, draws)))

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
                with self._telemetry.span("faregate.budget.reserve", option.deployment.name):
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
        usage: Usage,
        cost_nano_usd: int,
        outcome: str,
        attempts: int,
        result: RouteResult | None = None,
        implausible: ImplausibleUsage | None = None,
    ) -> int:
        """Commits the actual cost and draw, and makes the spend record durable.

        `result`, for a request with a client request id, is kept for its
        retries; `implausible`, the upstream's report that was not believed,
        is recorded beside the charge. Returns the least money left in the
        request's budgets. The caller must count the lease as settled before
        awaiting this: the store completes the commit even if the caller is
        cancelled meanwhile.
        From here on a shutdown lets the call finish: it is charged, so its
        caller gets its answer.
        """
        deployment = lease.option.deployment
        if lease.probe:
            deployment.latency.end_probe()
        commit_point()
        record = SpendRecord(
            request_id=plan.request_id,
            time_s=self._clock.now_s(),
            budget_keys=plan.call.budget_keys,
            agent=plan.call.agent,
            model=deployment.name,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            reserved_nano_usd=lease.holding.amount_nano_usd,
            cost_nano_usd=cost_nano_usd,
            outcome=outcome,
            route=plan.route.name,
            model_version=deployment.config.version,
            attempts=attempts,
            principal=plan.call.principal,
            usage_flaw=implausible.flaw.value if implausible else "",
            reported_usage=implausible.reported if implausible else "",
        )
        tokens = usage.input_tokens + usage.output_tokens
        self._telemetry.observe_settlement(usage, cost_nano_usd)
        return await self._state.commit(lease.holding, cost_nano_usd, tokens, record, result)


async def _count_long_prompt(
    call: RouteCall, route: RouteConfig, catalog: Catalog
) -> dict[str, int] | None:
    """The prompt's tokens per counter of the route's models, counted off the
    event loop, when the prompt is too long to count inline; else None (the
    selector counts it, at no extra cost)."""
    if counts_inline(call.messages):
        return None
    counters: dict[str, TokenCounter] = {}
    for slot in route.slots:
        for name in slot.models:
            counter = catalog.deployments[name].counter
            counters[counter.name] = counter
    return {
        name: await count_messages(counter, call.messages) for name, counter in counters.items()
    }


def _nothing_feasible(
    call: RouteCall, route: RouteConfig, selection: Selection, catalog: Catalog
) -> FaregateError:
    name = call.model or route.name
    unavailable = selection.unavailable
    if not unavailable:
        assert selection.unfit is not None
        field, description = selection.unfit
        return ModelCannotServe(name, field, description)
    if unavailable == "workers and queue full":
        first = catalog.deployments[route.slots[0].models[0]]
        return PoolSaturated(name, first.pool.retry_after_s())
    if unavailable.startswith("a limit pool"):
        return LimitExhausted(name, selection.limits_retry_after_s)
    return CandidatesUnavailable(name, unavailable, selection.available_in_s)
