"""Picks the model for a request and reserves its worst-case cost.

The worst case is the input counted from the messages plus the output cap
(the request's `max_output_tokens`, else the model's configured cap, trimmed
to what the context window leaves) at the model's prices. The preferred
candidate is reserved first; when its worst case does not fit the budget,
the cheapest feasible candidate that fits is used instead. Every reservation
is a single atomic store call, so concurrent plans can never share money.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from faregate_server.budgets import BudgetStore, Reservation
from faregate_server.catalog import Catalog, Deployment
from faregate_server.domain import RouteCall, UpstreamRequest
from faregate_server.errors import BudgetExhausted, ModelCannotServe


@dataclass(frozen=True, slots=True)
class Plan:
    """A request bound to one deployment, with its money held."""

    request_id: str
    deployment: Deployment
    upstream_request: UpstreamRequest
    input_tokens_estimate: int
    reservation: Reservation


@dataclass(frozen=True, slots=True)
class _Option:
    deployment: Deployment
    input_tokens: int
    max_output_tokens: int
    worst_case_nano_usd: int


class Planner:
    def __init__(self, catalog: Catalog, budgets: BudgetStore) -> None:
        self._catalog = catalog
        self._budgets = budgets

    async def plan(self, call: RouteCall) -> Plan:
        """Chooses a deployment and reserves its worst case.

        Raises:
            ModelNotFound, BudgetNotFound, ModelCannotServe, BudgetExhausted.
        """
        candidates = self._catalog.resolve(call.model)
        self._budgets.check(call.budget_key)
        options = _feasible_options(call, candidates)
        option, reservation = await self._reserve(call.budget_key, options)
        upstream_request = UpstreamRequest(
            upstream_model=option.deployment.config.upstream_model,
            messages=call.messages,
            max_output_tokens=option.max_output_tokens,
            temperature=call.temperature,
        )
        return Plan(
            request_id=uuid.uuid4().hex,
            deployment=option.deployment,
            upstream_request=upstream_request,
            input_tokens_estimate=option.input_tokens,
            reservation=reservation,
        )

    async def _reserve(
        self, budget_key: str, options: list[_Option]
    ) -> tuple[_Option, Reservation]:
        preferred = options[0]
        try:
            return preferred, await self._budgets.reserve(budget_key, preferred.worst_case_nano_usd)
        except BudgetExhausted as exhausted:
            shortfall = exhausted
        for option in sorted(options[1:], key=lambda o: o.worst_case_nano_usd):
            try:
                return option, await self._budgets.reserve(budget_key, option.worst_case_nano_usd)
            except BudgetExhausted as exhausted:
                shortfall = exhausted
        cheapest = min(option.worst_case_nano_usd for option in options)
        raise BudgetExhausted(budget_key, shortfall.remaining_nano_usd, cheapest)


def _feasible_options(call: RouteCall, candidates: tuple[Deployment, ...]) -> list[_Option]:
    input_tokens_by_counter: dict[str, int] = {}
    options = []
    first_problem: tuple[str, str] | None = None
    for deployment in candidates:
        counter = deployment.counter
        input_tokens = input_tokens_by_counter.get(counter.name)
        if input_tokens is None:
            input_tokens = input_tokens_by_counter[counter.name] = counter.count_messages(
                call.messages
            )
        model = deployment.config
        room = model.context_window_tokens - input_tokens
        if call.max_output_tokens is None:
            max_output_tokens = min(model.max_output_tokens, room)
        else:
            max_output_tokens = call.max_output_tokens
        problem = None
        if room < 1:
            problem = (
                "messages",
                f"about {input_tokens} input tokens exceed the context window of "
                f"{model.context_window_tokens}",
            )
        elif max_output_tokens > model.max_output_tokens:
            problem = ("max_output_tokens", f"exceeds the model's cap of {model.max_output_tokens}")
        elif max_output_tokens > room:
            problem = (
                "max_output_tokens",
                f"with about {input_tokens} input tokens exceeds the context window of "
                f"{model.context_window_tokens}",
            )
        if problem is not None:
            first_problem = first_problem or problem
            continue
        options.append(
            _Option(
                deployment=deployment,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                worst_case_nano_usd=model.price.cost_nano_usd(input_tokens, max_output_tokens),
            )
        )
    if not options:
        assert first_problem is not None
        field, description = first_problem
        raise ModelCannotServe(call.model or candidates[0].name, field, description)
    return options
