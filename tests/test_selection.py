"""Scored selection, property-tested: whatever the hints and live state, the
selector never offers a candidate that cannot serve."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import yaml
from faregate_server.catalog import Catalog
from faregate_server.config import Config, LimitDraw
from faregate_server.config_loader import parse_config
from faregate_server.domain import (
    Capability,
    ChatMessage,
    Preference,
    Role,
    RouteCall,
    RoutingHints,
    TaskKind,
)
from faregate_server.limits import LimitPools
from faregate_server.selection import Selector
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
        selector = Selector(limits, config.routing, clock, random.Random(0))
        selection = selector.select(call, catalog.resolve(""), catalog.deployments, task)

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
