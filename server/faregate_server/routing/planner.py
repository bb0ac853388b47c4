"""Turns a request into a plan: its route, task, ranked options and estimates.

The planner only computes: it resolves the route, classifies the task when
candidates are to be weighed, counts a long prompt off the event loop, and
asks the selector to judge every candidate. It holds no money and knows no
store: the first option is leased (routing/settlement.py) after the plan is
made, and a plan with no feasible option fails here with the reason the
first candidate gave.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass

from faregate_server.config.schema import RouteConfig
from faregate_server.domain import CandidateScore, RouteCall, TaskKind
from faregate_server.errors import (
    BudgetNotFound,
    CandidatesUnavailable,
    FaregateError,
    LimitExhausted,
    ModelCannotServe,
    PoolSaturated,
)
from faregate_server.routing.hooks import NO_HOOKS, Hooks
from faregate_server.routing.selection import Availability, Option, Selection, Selector
from faregate_server.routing.tasks import classify_task
from faregate_server.upstream.catalog import Catalog
from faregate_server.upstream.tokens import (
    TokenCounter,
    count_messages,
    counts_inline,
    options_tokens,
)


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


class Planner:
    def __init__(self, selector: Selector, hooks: Hooks = NO_HOOKS) -> None:
        self._selector = selector
        self._hooks = hooks
        # Request ids: random per process, counted within it; unique without
        # costing a random draw per request.
        self._id_prefix = secrets.token_hex(8)
        self._request_numbers = itertools.count()

    async def plan(self, call: RouteCall, catalog: Catalog) -> Plan:
        """Chooses the options for a request, first choice first.

        Raises:
            ModelNotFound, BudgetNotFound, ModelCannotServe, PoolSaturated,
            LimitExhausted, CandidatesUnavailable.
        """
        route = catalog.resolve(call.model)
        for key in call.budget_keys:
            if key not in catalog.config.budgets:
                raise BudgetNotFound(key)
        with self._hooks.span("faregate.select"):
            task = call.hints.task
            if task is None and (len(route.slots) > 1 or call.hints.explain):
                # The task only weighs candidates against each other: a route of
                # one is not worth classifying for.
                task = classify_task(call.messages)
            input_tokens = await _count_long_prompt(call, route, catalog)
            selection = self._selector.select(
                call, route, catalog.config.routing, catalog.deployments, task, input_tokens
            )
        if not selection.options:
            raise _nothing_feasible(call, route, selection, catalog)
        options = selection.options
        if not (call.hints.fallback and catalog.is_route(call.model)):
            options = options[:1]
        return Plan(
            request_id=call.request_id or f"{self._id_prefix}{next(self._request_numbers):016x}",
            call=call,
            route=route,
            task=task,
            options=options,
            scores=selection.scores,
        )


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
        name: await count_messages(counter, call.messages) + options_tokens(counter, call.options)
        for name, counter in counters.items()
    }


def _nothing_feasible(
    call: RouteCall, route: RouteConfig, selection: Selection, catalog: Catalog
) -> FaregateError:
    name = call.model or route.name
    unavailable = selection.unavailable
    if unavailable is Availability.AVAILABLE:
        assert selection.unfit is not None
        field, description = selection.unfit
        return ModelCannotServe(name, field, description)
    if unavailable is Availability.POOL_FULL:
        first = catalog.deployments[route.slots[0].models[0]]
        return PoolSaturated(name, first.pool.retry_after_s())
    if unavailable is Availability.LIMITS_EXHAUSTED:
        return LimitExhausted(name, selection.limits_retry_after_s)
    return CandidatesUnavailable(name, unavailable.value, selection.available_in_s)
