"""Attempts' bookkeeping of retry budgets: a retry or hedge is paid for only
when it is made, and a hedge counts as a first attempt where it goes.

The upstream call is the test's own `start`; the planner, the settlement
that leases, the state, budgets and health are the real ones, on a fake clock."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest
import yaml
from faregate_server.config.load import parse_config
from faregate_server.config.schema import Config
from faregate_server.domain import AttemptRecord, ChatMessage, Role, RouteCall, RoutingHints
from faregate_server.routing.attempts import Attempts, AttemptsFailed
from faregate_server.routing.planner import Plan, Planner
from faregate_server.routing.selection import Selector
from faregate_server.routing.settlement import Lease, Settlement
from faregate_server.state.ledger import MemoryLedger
from faregate_server.state.store import LocalState
from faregate_server.upstream.catalog import Catalog
from faregate_server.upstream.providers import UpstreamError, UpstreamErrorKind

from tests.fakes.clock import FakeClock

_MODEL = {"provider": "sim", "quality": 0.5, "input_usd_per_mtok": 1, "output_usd_per_mtok": 2}


def _config(route: Any) -> Config:
    """Twins a and b, a route over them, and a budget `b` of 100 USD."""
    return parse_config(
        yaml.safe_dump(
            {
                "models": {"a": _MODEL, "b": _MODEL},
                "routes": {"default": route},
                "budgets": {"b": {"limit_usd": 100, "window": "none"}},
                "auth": {"enabled": False},
            }
        )
    )


def _call(model: str = "") -> RouteCall:
    return RouteCall(
        model=model, messages=(ChatMessage(Role.USER, "hi"),), agent="", budget_key="b",
        max_output_tokens=None, temperature=None, metadata={}, hints=RoutingHints(),
    )  # fmt: skip


class _Setup:
    """A catalog of twins, real state, and attempts leasing through a real Settlement."""

    def __init__(self, config: Config, catalog: Catalog, clock: FakeClock) -> None:
        self.catalog = catalog
        self.state = LocalState(config, clock, MemoryLedger())
        self.planner = Planner(Selector(self.state.limits, clock, random.Random(0)))
        self.settlement = Settlement(self.state, clock)
        self.attempts = Attempts(self.settlement, config.retries, clock, random.Random(0))

    async def plan(self, call: RouteCall) -> tuple[Plan, Lease]:
        plan = await self.planner.plan(call, self.catalog)
        return plan, await self.settlement.first_lease(plan)


async def _setup(config: Config) -> _Setup:
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        catalog = Catalog(config, session, clock)
    return _Setup(config, catalog, clock)


async def _discard(_: str) -> None:
    pass


def _deadline_s() -> float:
    return asyncio.get_running_loop().time() + 30


async def test_a_retry_with_no_lease_to_be_had_does_not_spend_the_budget() -> None:
    setup = await _setup(_config(["a", "b"]))
    plan, lease = await setup.plan(_call("a"))  # a model, not a route: no fallback
    state, catalog, attempts = setup.state, setup.catalog, setup.attempts

    async def fail_as_the_budget_is_cut(_: Lease) -> str:
        await state.update_budget("b", set_limit_nano_usd=0)  # an operator, meanwhile
        raise UpstreamError(UpstreamErrorKind.UNAVAILABLE, "503")

    records: list[AttemptRecord] = []
    with pytest.raises(AttemptsFailed):
        await attempts.first_result(
            plan, lease, fail_as_the_budget_is_cut, _discard, records, _deadline_s()
        )

    assert len(records) == 1  # no retry was made...
    assert catalog.deployments["a"].retry_budget.statistics().retries_in_window == 0  # nor paid


async def test_a_hedge_with_no_lease_to_be_had_does_not_spend_the_budget() -> None:
    route = {"candidates": ["a", "b"], "hedge_after_s": 0.01}
    setup = await _setup(_config(route))
    plan, lease = await setup.plan(_call())
    state, attempts = setup.state, setup.attempts
    primary = lease.option.deployment

    async def answer_as_the_budget_is_cut(_: Lease) -> str:
        # Only what the primary holds is left: no hedge can be leased.
        await state.update_budget("b", set_limit_nano_usd=lease.holding.amount_nano_usd)
        await asyncio.sleep(0.1)  # late: well past the hedge delay
        return "answer"

    records: list[AttemptRecord] = []
    result, won, _ = await attempts.first_result(
        plan, lease, answer_as_the_budget_is_cut, _discard, records, _deadline_s()
    )

    assert (result, won) == ("answer", lease)
    assert primary.retry_budget.statistics().retries_in_window == 0
    setup.settlement.release(won)


async def test_a_hedge_counts_as_a_first_attempt_on_the_model_it_goes_to() -> None:
    route = {"candidates": ["a", "b"], "hedge_after_s": 0.01}
    setup = await _setup(_config(route))
    plan, lease = await setup.plan(_call())
    attempts = setup.attempts
    primary = lease.option.deployment
    never = asyncio.Event()

    async def primary_hangs(attempt: Lease) -> str:
        if attempt is lease:
            await never.wait()
        return attempt.option.deployment.name

    records: list[AttemptRecord] = []
    result, won, record = await attempts.first_result(
        plan, lease, primary_hangs, _discard, records, _deadline_s()
    )

    hedged_to = won.option.deployment
    assert hedged_to is not primary
    assert record.hedge
    assert result == hedged_to.name
    assert primary.retry_budget.statistics().retries_in_window == 1  # the hedge's retry
    # As a fallback would be: a request of the model it went to.
    assert hedged_to.retry_budget.statistics().requests_in_window == 1
    setup.settlement.release(won)
