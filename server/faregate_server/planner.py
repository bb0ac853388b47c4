"""Turns a request into a plan: its route, task, ranked options, and leases.

A `Lease` is an option with its money held: the worst case reserved from the
budget and the projected draw from the limit pools, both atomically. The
planner hands out the first lease at planning time and further ones when an
attempt fails and a retry is allowed; every lease is either settled or
released by the gateway.
"""

from __future__ import annotations

import itertools
import random
import secrets
from dataclasses import dataclass

from faregate_server.budgets import BudgetStore, Reservation
from faregate_server.catalog import Catalog
from faregate_server.clock import Clock
from faregate_server.config import RouteConfig
from faregate_server.domain import CandidateScore, RouteCall, TaskKind, Usage
from faregate_server.errors import (
    BudgetExhausted,
    CandidatesUnavailable,
    FaregateError,
    LimitExhausted,
    ModelCannotServe,
    PoolSaturated,
)
from faregate_server.ledger import Ledger, SpendRecord
from faregate_server.limits import LimitPools, LimitReservation
from faregate_server.selection import Option, Selection, Selector
from faregate_server.tasks import classify_task


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
    """An option with the request's worst case held on its budget and limit pools."""

    option: Option
    reservation: Reservation
    limits: LimitReservation | None


class Planner:
    def __init__(
        self,
        budgets: BudgetStore,
        limits: LimitPools,
        ledger: Ledger,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self._budgets = budgets
        self._ledger = ledger
        self._limits = limits
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
            selector = Selector(self._limits, catalog.config.routing, self._clock, self._rng)
            self._selectors = (catalog, selector)
        return self._selectors[1]

    async def plan(self, call: RouteCall, catalog: Catalog) -> tuple[Plan, Lease]:
        """Chooses the options for a request and leases the first that the budget covers.

        Raises:
            ModelNotFound, BudgetNotFound, ModelCannotServe, BudgetExhausted,
            PoolSaturated, LimitExhausted, CandidatesUnavailable.
        """
        route = catalog.resolve(call.model)
        self._budgets.check(call.budget_key)
        task = call.hints.task
        if task is None and (len(route.slots) > 1 or call.hints.explain):
            # The task only weighs candidates against each other: a route of
            # one is not worth classifying for.
            task = classify_task(call.messages)
        selection = self._selector(catalog).select(call, route, catalog.deployments, task)
        if not selection.options:
            raise _nothing_feasible(call, route, selection, catalog)
        options = selection.options
        if not (call.hints.fallback and catalog.is_route(call.model)):
            options = options[:1]
        plan = Plan(
            request_id=f"{self._id_prefix}{next(self._request_numbers):016x}",
            call=call,
            route=route,
            task=task,
            options=options,
            scores=selection.scores,
        )
        lease = await self.lease(plan, options)
        if lease is None:
            cheapest = min(option.worst_case_nano_usd for option in options)
            remaining = self._budgets.snapshot(call.budget_key).remaining_nano_usd
            if remaining >= cheapest:
                draws = [option.draw for option in options]
                raise LimitExhausted(route.name, min(map(self._limits.retry_after_s, draws)))
            raise BudgetExhausted(call.budget_key, remaining, cheapest)
        return plan, lease

    async def lease(self, plan: Plan, options: tuple[Option, ...]) -> Lease | None:
        """Leases the first of `options` whose budget and limit pools have room."""
        for option in options:
            try:
                reservation = await self._budgets.reserve(
                    plan.call.budget_key, option.worst_case_nano_usd
                )
            except BudgetExhausted:
                continue
            limits = None
            if option.draw:
                limits = self._limits.reserve(option.deployment.config.draws, option.draw)
                if limits is None:
                    await self._budgets.release(reservation)
                    continue
            return Lease(option, reservation, limits)
        return None

    async def release(self, lease: Lease) -> None:
        await self._budgets.release(lease.reservation)
        if lease.limits is not None:
            self._limits.release(lease.limits)

    async def settle(
        self, plan: Plan, lease: Lease, usage: Usage, cost_nano_usd: int, outcome: str
    ) -> tuple[int, SpendRecord]:
        """Commits the actual cost and draw.

        Returns the budget's money remaining and the ledger record, which the
        caller must pass to `record` before reporting the spend: committing
        happens here at once, the durable write may wait, and a cancellation
        landing in the wait must not look like an unsettled lease.
        """
        tokens = usage.input_tokens + usage.output_tokens
        if lease.limits is not None:
            self._limits.commit(lease.limits, tokens, cost_nano_usd)
        remaining = await self._budgets.commit(lease.reservation, cost_nano_usd)
        record = SpendRecord(
            request_id=plan.request_id,
            time_s=self._clock.now_s(),
            budget_key=plan.call.budget_key,
            agent=plan.call.agent,
            model=lease.option.deployment.name,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            reserved_nano_usd=lease.reservation.amount_nano_usd,
            cost_nano_usd=cost_nano_usd,
            outcome=outcome,
        )
        return remaining, record

    async def record(self, record: SpendRecord) -> None:
        """Returns once the ledger holds the record durably."""
        await self._ledger.record(record)


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
    return CandidatesUnavailable(name, unavailable)
