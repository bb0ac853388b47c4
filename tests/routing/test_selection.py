"""Scored selection, property-tested: whatever the hints and live state, the
selector never offers a candidate that cannot serve."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest
import yaml
from faregate_server.config.load import parse_config
from faregate_server.config.schema import Config, LimitDraw
from faregate_server.domain import (
    Capability,
    ChatMessage,
    Preference,
    Role,
    RouteCall,
    RoutingHints,
    TaskKind,
)
from faregate_server.errors import BudgetExhausted
from faregate_server.routing.planner import Planner
from faregate_server.routing.selection import Selection, Selector
from faregate_server.routing.settlement import Lease, Settlement
from faregate_server.state.ledger import MemoryLedger
from faregate_server.state.limits import LimitPools
from faregate_server.state.store import LocalState
from faregate_server.upstream.catalog import Catalog
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.clock import FakeClock

MODELS = ("big", "mid", "small")


def _config(qualities: list[float], capacity: int) -> Config:
    models: dict[str, Any] = {}
    for index, (name, quality) in enumerate(zip(MODELS, qualities, strict=True)):
        models[name] = {
            "provider": "sim",
            "quality": quality,
            "input_usd_per_mtok": 3 / (index + 1),
            "output_usd_per_mtok": 15 / (index + 1),
            "context_window_tokens": 1000 * (index + 1),
            "max_output_tokens": 200,
            "capabilities": ["tools"] if index != 1 else ["vision"],
            "limits": {"shared": {"per_1k_tokens": 1000}},
            "breaker": {"consecutive_failures": 1},
        }
    return parse_config(
        yaml.safe_dump(
            {
                "models": models,
                "routes": {"default": list(MODELS)},
                "limit_pools": {"shared": {"unit": "tokens", "capacity": capacity}},
                "auth": {"enabled": False},
            }
        )
    )


@settings(max_examples=150, deadline=None)
@given(
    qualities=st.lists(st.floats(0, 1), min_size=3, max_size=3),
    capacity=st.integers(1, 5_000),
    used=st.integers(0, 5_000),
    broken=st.sets(st.sampled_from(MODELS)),
    prefer=st.sampled_from(list(Preference)),
    min_quality=st.none() | st.floats(0, 1),
    max_cost=st.none() | st.integers(0, 10_000_000),
    capabilities=st.sets(st.sampled_from(list(Capability))),
    task=st.sampled_from(list(TaskKind)),
    prompt_chars=st.integers(1, 4_000),
)
def test_selector_never_offers_an_infeasible_candidate(
    qualities: list[float],
    capacity: int,
    used: int,
    broken: set[str],
    prefer: Preference,
    min_quality: float | None,
    max_cost: int | None,
    capabilities: set[Capability],
    task: TaskKind,
    prompt_chars: int,
) -> None:
    async def scenario() -> None:
        config = _config(qualities, capacity)
        clock = FakeClock()
        limits = LimitPools(config.limit_pools, clock)
        held = limits.reserve(
            (LimitDraw("shared", per_1k_tokens=1000),), (("shared", min(used, capacity)),)
        )
        assert held is not None
        async with aiohttp.ClientSession() as session:
            catalog = Catalog(config, session, clock)
        for name in broken:
            breaker = catalog.deployments[name].breaker
            breaker.on_failure(breaker.on_attempt_start())
        hints = RoutingHints(
            prefer=prefer,
            min_quality=min_quality,
            max_cost_nano_usd=max_cost,
            capabilities=frozenset(capabilities),
        )
        call = RouteCall(
            model="",
            messages=(ChatMessage(Role.USER, "x" * prompt_chars),),
            agent="",
            budget_key="b",
            max_output_tokens=None,
            temperature=None,
            metadata={},
            hints=hints,
        )
        selector = Selector(limits, clock, random.Random(0))
        selection = selector.select(
            call, catalog.resolve(""), config.routing, catalog.deployments, task
        )

        for option in selection.options:
            model = option.deployment.config
            assert option.deployment.name not in broken
            assert option.input_tokens + option.max_output_tokens <= model.context_window_tokens
            assert option.max_output_tokens <= model.max_output_tokens
            assert capabilities <= model.capabilities
            assert min_quality is None or model.quality >= min_quality
            assert max_cost is None or option.worst_case_nano_usd <= max_cost
            assert option.input_tokens + option.max_output_tokens <= capacity - min(used, capacity)
        scores = [option.score for option in selection.options]
        # Ranked best first, except that the first may be a near-equal picked for latency.
        assert scores[1:] == sorted(scores[1:], reverse=True)

    asyncio.run(scenario())


def _twins_config(budget_usd: float | None = None) -> Config:
    model = {"provider": "sim", "quality": 0.5, "input_usd_per_mtok": 1, "output_usd_per_mtok": 2}
    return parse_config(
        yaml.safe_dump(
            {
                "models": {
                    "a": {**model, "breaker": {"consecutive_failures": 1, "cooldown_s": 3}},
                    "b": model,
                },
                "routes": {"default": ["a", "b"]},
                "auth": {"enabled": False},
                **(
                    {"budgets": {"b": {"limit_usd": budget_usd, "window": "none"}}}
                    if budget_usd is not None
                    else {}
                ),
            }
        )
    )


async def _twins(clock: FakeClock) -> tuple[Catalog, Selector]:
    config = _twins_config()
    async with aiohttp.ClientSession() as session:
        catalog = Catalog(config, session, clock)
    limits = LimitPools(config.limit_pools, clock)
    return catalog, Selector(limits, clock, random.Random(0))


def _select(selector: Selector, catalog: Catalog, call: RouteCall) -> Selection:
    return selector.select(
        call, catalog.resolve(""), catalog.config.routing, catalog.deployments, None
    )


def _call(prefer: Preference = Preference.BALANCED) -> RouteCall:
    return RouteCall(
        model="", messages=(ChatMessage(Role.USER, "hi"),), agent="", budget_key="b",
        max_output_tokens=None, temperature=None, metadata={}, hints=RoutingHints(prefer=prefer),
    )  # fmt: skip


async def test_an_unmeasured_idle_model_is_tried_first_then_judged_by_its_measurement() -> None:
    clock = FakeClock()
    catalog, selector = await _twins(clock)
    a, b = catalog.deployments["a"], catalog.deployments["b"]
    a.latency.observe(0.1, 0.1)

    def first(prefer: Preference) -> str:
        return _select(selector, catalog, _call(prefer)).options[0].deployment.name

    # Unmeasured and idle: expected to take no time, so b goes first.
    assert first(Preference.LATENCY) == first(Preference.BALANCED) == "b"
    # While its first call runs it is neutral (1 s), so a burst goes to the measured a.
    b.latency.started()
    assert first(Preference.LATENCY) == first(Preference.BALANCED) == "a"
    # Measured slow, it is measured out.
    b.latency.finished()
    b.latency.observe(3.0, 3.0)
    assert first(Preference.LATENCY) == first(Preference.BALANCED) == "a"


async def test_nothing_available_says_when_the_soonest_candidate_serves_again() -> None:
    clock = FakeClock()
    catalog, selector = await _twins(clock)
    a, b = catalog.deployments["a"], catalog.deployments["b"]
    b.cooldown_until_s = clock.monotonic_s() + 5  # a 429 with Retry-After: 5
    a.breaker.on_failure(a.breaker.on_attempt_start())  # open for its cooldown_s of 3

    def soonest_s() -> float:
        selection = _select(selector, catalog, _call())
        assert selection.options == ()
        return selection.available_in_s

    assert soonest_s() == 3.0
    clock.advance(1)
    assert soonest_s() == 2.0
    b.cooldown_until_s = clock.monotonic_s() + 0.5
    assert soonest_s() == 0.5
    clock.advance(2)  # both can serve again
    assert len(_select(selector, catalog, _call()).options) == 2


async def _twins_planner(
    clock: FakeClock, budget_usd: float = 100
) -> tuple[Catalog, Planner, Settlement]:
    config = _twins_config(budget_usd)
    async with aiohttp.ClientSession() as session:
        catalog = Catalog(config, session, clock)
    state = LocalState(config, clock, MemoryLedger())
    planner = Planner(Selector(state.limits, clock, random.Random(0)))
    return catalog, planner, Settlement(state, clock)


async def _lease(planner: Planner, settlement: Settlement, catalog: Catalog) -> Lease:
    return await settlement.first_lease(await planner.plan(_call(), catalog))


async def test_a_burst_sends_an_unmeasured_model_one_probe_until_its_lease_ends() -> None:
    clock = FakeClock()
    catalog, planner, settlement = await _twins_planner(clock)
    a, b = catalog.deployments["a"], catalog.deployments["b"]
    a.latency.observe(0.1, 0.1)

    # Twenty requests planned at once, before any of their calls starts.
    leases = await asyncio.gather(*(_lease(planner, settlement, catalog) for _ in range(20)))
    assert sum(lease.option.deployment is b for lease in leases) == 1
    assert b.latency.probing

    # The probe's lease ends without a measurement (released unused): the
    # claim is given back, and the next request probes b again.
    settlement.release(next(lease for lease in leases if lease.option.deployment is b))
    assert not b.latency.probing
    lease = await _lease(planner, settlement, catalog)
    assert lease.option.deployment is b
    for held in leases:
        if held.option.deployment is a:
            settlement.release(held)
    settlement.release(lease)
    assert not b.latency.probing


async def test_a_probe_refused_its_lease_does_not_keep_the_claim() -> None:
    clock = FakeClock()
    # A budget of about nothing: every reservation is refused.
    catalog, planner, settlement = await _twins_planner(clock, budget_usd=0)
    catalog.deployments["a"].latency.observe(0.1, 0.1)
    with pytest.raises(BudgetExhausted):
        await _lease(planner, settlement, catalog)
    assert not catalog.deployments["b"].latency.probing
