"""What the gateway keeps of a request with a client request id, read back
from the real in-memory state the way its retry would claim it.

Two simulated models on one route that answer at once; the planner, the
settlement and the state are the real ones."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import aclosing

import aiohttp
import pytest
import yaml
from faregate_server.config.load import parse_config
from faregate_server.domain import (
    ChatMessage,
    Role,
    RouteCall,
    RouteResult,
    RoutingDecision,
    RoutingHints,
    StreamFinished,
)
from faregate_server.routing.gateway import Gateway
from faregate_server.routing.planner import Planner
from faregate_server.routing.scope import CallScope
from faregate_server.routing.selection import Selector
from faregate_server.routing.settlement import Settlement
from faregate_server.state.ledger import MemoryLedger
from faregate_server.state.replay import decode_result
from faregate_server.state.store import LocalState
from faregate_server.upstream.catalog import Catalog

from tests.fakes.clock import FakeClock

_INSTANT = {"first_token_delay_s": 0, "token_delay_s": 0, "output_tokens": 3}


class _Served:
    def __init__(self, gateway: Gateway, state: LocalState) -> None:
        self.gateway = gateway
        self.state = state

    async def kept(self, call: RouteCall) -> RouteResult:
        """The result kept for `call`'s request id, as its retry finds it."""
        stored = await self.state.claim(call.claim_key, call.fingerprint)
        assert stored is not None
        return decode_result(stored)


@pytest.fixture
async def served() -> AsyncIterator[_Served]:
    config = parse_config(
        yaml.safe_dump(
            {
                "models": {
                    name: {
                        "provider": "sim",
                        "quality": quality,
                        "input_usd_per_mtok": price,
                        "output_usd_per_mtok": price,
                        "sim": _INSTANT,
                    }
                    for name, quality, price in (("big", 0.9, 3), ("small", 0.5, 1))
                },
                "routes": {"default": ["big", "small"]},
                "budgets": {"b": {"limit_usd": 100, "window": "none"}},
                "auth": {"enabled": False},
            }
        ),
        env={},
    )
    clock = FakeClock()
    rng = random.Random(0)
    async with aiohttp.ClientSession() as session:
        catalog = Catalog(config, session, clock)
        state = LocalState(config, clock, MemoryLedger())
        planner = Planner(Selector(state.limits, clock, rng))
        settlement = Settlement(state, clock)
        yield _Served(Gateway(catalog, planner, settlement, state, clock, rng), state)


def _call(request_id: str) -> RouteCall:
    return RouteCall(
        model="default", messages=(ChatMessage(Role.USER, "hello there"),), agent="",
        budget_key="b", max_output_tokens=None, temperature=None, metadata={},
        hints=RoutingHints(explain=True), request_id=request_id, fingerprint=f"fp-{request_id}",
    )  # fmt: skip


async def test_a_whole_answer_is_kept_with_its_attempts_and_candidates(
    served: _Served,
) -> None:
    call = _call("whole")
    result = await served.gateway.route(call, CallScope.unobserved(math.inf))

    kept = await served.kept(call)
    assert kept.output == result.output
    assert kept.decision == result.decision
    assert len(kept.decision.candidates) == 2
    (attempt,) = kept.decision.attempts
    assert attempt.cost_nano_usd == result.cost_nano_usd


async def test_a_stream_is_kept_as_its_accounting_without_attempts_or_candidates(
    served: _Served,
) -> None:
    call = _call("stream")
    events = served.gateway.stream(call, CallScope.unobserved(math.inf))
    async with aclosing(events):
        items = [item async for item in events]
    decision, *_, finished = items
    assert isinstance(decision, RoutingDecision)
    assert isinstance(finished, StreamFinished)
    assert len(decision.attempts) == 1
    assert len(decision.candidates) == 2

    kept = await served.kept(call)
    assert kept.output == ""
    assert kept.decision.attempts == ()
    assert kept.decision.candidates == ()
    assert kept.decision.model == decision.model
    assert kept.decision.request_id == decision.request_id
    assert kept.decision.reserved_nano_usd == decision.reserved_nano_usd
    assert (kept.usage, kept.cost_nano_usd) == (finished.usage, finished.cost_nano_usd)
    assert kept.budget_remaining_nano_usd == finished.budget_remaining_nano_usd
