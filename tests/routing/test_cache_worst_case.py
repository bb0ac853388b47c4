"""With prompt caching on, the worst case reserved prices the input at the
dearest rate that can apply (a five-minute write; an hour's write with a
one-hour TTL), as `explain` reports it; without it, at the input price. A
request's `cache_prompt` overrides its route's."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import pytest
import yaml
from faregate_server.config.load import parse_config
from faregate_server.content import CacheTtl, GenerationOptions
from faregate_server.domain import ChatMessage, Role, RouteCall, RoutingHints
from faregate_server.money import Price
from faregate_server.routing.selection import Selector, cache_ttl, worst_case_nano_usd
from faregate_server.state.limits import LimitPools
from faregate_server.upstream.catalog import Catalog

from tests.fakes.clock import FakeClock

OUTPUT_TOKENS = 100
# Sonnet's prices in nano-USD per million tokens: $3 in, $15 out, and the
# defaults for an anthropic model, $3.75 and $6 for writes.
INPUT, OUTPUT, WRITE, WRITE_1H = 3_000_000_000, 15_000_000_000, 3_750_000_000, 6_000_000_000


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


async def _worst_case(route: dict[str, Any], cache_prompt: bool | None) -> tuple[int, int]:
    """The explained worst case of a call to `claude` on `route`, and its counted input."""
    config = parse_config(
        yaml.safe_dump(
            {
                "models": {
                    "claude": {
                        "provider": "anthropic",
                        "api_key_env": "ANTHROPIC_API_KEY",
                        "input_usd_per_mtok": 3,
                        "output_usd_per_mtok": 15,
                        "max_output_tokens": OUTPUT_TOKENS,
                    }
                },
                "routes": {"default": route},
                "auth": {"enabled": False},
            }
        ),
        env={"ANTHROPIC_API_KEY": "sk-ant-x"},
    )
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        catalog = Catalog(config, session, clock)
    call = RouteCall(
        model="",
        messages=(ChatMessage(Role.SYSTEM, "rules " * 500), ChatMessage(Role.USER, "go")),
        agent="",
        budget_key="b",
        max_output_tokens=None,
        temperature=None,
        metadata={},
        hints=RoutingHints(explain=True),
        options=None if cache_prompt is None else GenerationOptions(cache_prompt=cache_prompt),
    )
    selector = Selector(LimitPools(config.limit_pools, clock), clock, random.Random(0))
    selection = selector.select(
        call, catalog.resolve(""), config.routing, catalog.deployments, None
    )
    (score,) = selection.scores
    (option,) = selection.options
    assert score.worst_case_nano_usd == option.worst_case_nano_usd
    return score.worst_case_nano_usd, option.input_tokens


@pytest.mark.parametrize(
    ("route", "cache_prompt", "input_price"),
    [
        ({"candidates": ["claude"]}, None, INPUT),
        ({"candidates": ["claude"], "cache_prompt": True}, None, WRITE),
        ({"candidates": ["claude"], "cache_prompt": True, "cache_ttl": "1h"}, None, WRITE_1H),
        ({"candidates": ["claude"], "cache_prompt": True}, False, INPUT),
        ({"candidates": ["claude"], "cache_ttl": "1h"}, True, WRITE_1H),
        ({"candidates": ["claude"]}, True, WRITE),
    ],
)
async def test_the_worst_case_prices_input_at_the_dearest_rate_caching_allows(
    route: dict[str, Any], cache_prompt: bool | None, input_price: int
) -> None:
    worst, input_tokens = await _worst_case(route, cache_prompt)

    assert input_tokens > 1000
    assert worst == _ceil_div(input_tokens * input_price + OUTPUT_TOKENS * OUTPUT, 10**6)


def test_a_cache_price_below_input_never_lowers_the_worst_case() -> None:
    # Writes cheaper than input, reads dearer: nonsense prices, yet the worst
    # case is still the dearest of them.
    price = Price(1000, 0, cached_input_nano_usd_per_mtok=3000, cache_write_nano_usd_per_mtok=10)

    assert worst_case_nano_usd(price, 10**6, 0, None) == 1000
    assert worst_case_nano_usd(price, 10**6, 0, CacheTtl.FIVE_MINUTES) == 3000
    cheap_writes = Price(1000, 0, cache_write_nano_usd_per_mtok=10)
    assert worst_case_nano_usd(cheap_writes, 10**6, 0, CacheTtl.ONE_HOUR) == 1000


def test_the_requests_setting_overrides_the_routes_either_way() -> None:
    config = parse_config(
        yaml.safe_dump(
            {
                "models": {
                    "m": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}
                },
                "routes": {
                    "on": {"candidates": ["m"], "cache_prompt": True, "cache_ttl": "1h"},
                    "default": ["m"],
                },
                "auth": {"enabled": False},
            }
        )
    )
    on, off = config.routes["on"], config.routes["default"]

    def call(cache_prompt: bool | None) -> RouteCall:
        options = None if cache_prompt is None else GenerationOptions(cache_prompt=cache_prompt)
        return RouteCall(
            "", (ChatMessage(Role.USER, "x"),), "", "b", None, None, {}, options=options
        )

    assert cache_ttl(call(None), on) is CacheTtl.ONE_HOUR
    assert cache_ttl(call(False), on) is None
    assert cache_ttl(call(None), off) is None
    assert cache_ttl(call(True), off) is CacheTtl.FIVE_MINUTES
