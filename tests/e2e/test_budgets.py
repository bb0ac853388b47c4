"""Budgets end to end: exact under concurrency, cheaper fallback, exhaustion,
and windows that reset on schedule."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from faregate.v1 import router_pb2
from faregate_client import BudgetExhausted, FaregateError
from faregate_server.domain import ChatMessage, Role
from faregate_server.money import Price
from faregate_server.upstream.tokens import TiktokenCounter

from tests.conftest import StartFaregate, to_config
from tests.fakes.clock import FakeClock
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

GPT_PRICE = Price(2_500_000_000, 10_000_000_000)
CHEAP_PRICE = Price(150_000_000, 600_000_000)
MAX_OUTPUT = 10
PROMPT = "How many budgets fit?"


def _input_tokens() -> int:
    return TiktokenCounter().count_messages([ChatMessage(Role.USER, PROMPT)])


def _usd(nano_usd: int) -> str:
    return str(Decimal(nano_usd) / 10**9)


async def test_concurrent_requests_never_share_money_and_the_ledger_is_exact(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    admitted, total = 37, 1000
    input_tokens = _input_tokens()
    worst_case = GPT_PRICE.cost_nano_usd(input_tokens, MAX_OUTPUT)
    config_data["budgets"]["race"] = {"limit_usd": _usd(admitted * worst_case)}
    config_data["models"]["gpt-fake"].update(workers=16, queue=total)
    gate = asyncio.Event()
    # Each admitted call reports a different usage, all within the worst case.
    upstream.queue(
        *(
            Script(gate=gate, usage=(input_tokens - i % 3, i % (MAX_OUTPUT + 1)))
            for i in range(total)
        )
    )

    async with start_faregate(to_config(config_data)) as faregate:
        calls = [
            asyncio.create_task(
                faregate.client.route(
                    PROMPT, budget_key="race", model="gpt-fake", max_output_tokens=MAX_OUTPUT
                )
            )
            for _ in range(total)
        ]
        # Hold every upstream answer until each call has been admitted or
        # rejected, so no early commit frees money for a latecomer.
        await eventually(
            lambda: sum(call.done() for call in calls) >= total - admitted, timeout_s=30
        )
        assert await faregate.reserved_nano_usd("race") == admitted * worst_case
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)

        served = [r for r in results if isinstance(r, router_pb2.RouteResponse)]
        rejected = [r for r in results if isinstance(r, FaregateError)]
        assert len(served) == admitted
        assert len(rejected) == total - admitted
        assert all(isinstance(e, BudgetExhausted) for e in rejected)
        assert all(r.reserved_nano_usd == worst_case for r in served)
        reported = sum(GPT_PRICE.cost_nano_usd(i, o) for i, o in upstream.reported_usage)
        assert len(upstream.reported_usage) == admitted
        assert await faregate.spent_nano_usd("race") == reported
        assert sum(r.cost_nano_usd for r in served) == reported
        assert await faregate.reserved_nano_usd("race") == 0


async def test_route_falls_back_to_the_cheapest_candidate_that_fits(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    input_tokens = _input_tokens()
    cheap_worst = CHEAP_PRICE.cost_nano_usd(input_tokens, MAX_OUTPUT)
    gpt_worst = GPT_PRICE.cost_nano_usd(input_tokens, MAX_OUTPUT)
    assert cheap_worst < gpt_worst
    config_data["budgets"]["small"] = {"limit_usd": _usd(gpt_worst - 1)}
    async with start_faregate(to_config(config_data)) as faregate:
        reply = await faregate.client.route(
            PROMPT, budget_key="small", max_output_tokens=MAX_OUTPUT
        )

        assert reply.model_used == "cheap-fake"
        assert reply.reserved_nano_usd == cheap_worst
        assert upstream.received[0].body["model"] == "cheap-fake"


async def test_explicit_model_is_never_swapped_for_a_cheaper_one(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    gpt_worst = GPT_PRICE.cost_nano_usd(_input_tokens(), MAX_OUTPUT)
    config_data["budgets"]["small"] = {"limit_usd": _usd(gpt_worst - 1)}
    async with start_faregate(to_config(config_data)) as faregate:
        with pytest.raises(BudgetExhausted):
            await faregate.client.route(
                PROMPT, budget_key="small", model="gpt-fake", max_output_tokens=MAX_OUTPUT
            )
        assert upstream.received == []


async def test_exhausted_budget_is_resource_exhausted_naming_the_budget(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["budgets"]["empty"] = {"limit_usd": "0.000000001"}
    async with start_faregate(to_config(config_data)) as faregate:
        with pytest.raises(BudgetExhausted) as caught:
            await faregate.client.route(PROMPT, budget_key="empty")
        stream = faregate.client.stream_route(PROMPT, budget_key="empty")
        with pytest.raises(BudgetExhausted):
            await anext(aiter(stream))

        assert caught.value.reason == "BUDGET_EXHAUSTED"
        assert caught.value.budget_key == "empty"
        assert caught.value.metadata["remainingNanoUsd"] == "1"
        assert upstream.received == []
        assert await faregate.reserved_nano_usd("empty") == 0


async def test_budget_window_resets_on_schedule(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    input_tokens = _input_tokens()
    upstream.default = Script(usage=(input_tokens, MAX_OUTPUT))
    worst_case = GPT_PRICE.cost_nano_usd(input_tokens, MAX_OUTPUT)
    config_data["budgets"]["hourly"] = {"limit_usd": _usd(worst_case), "window": "hourly"}
    clock = FakeClock(now_s=1_800_000_000.0)  # 08:00:00 UTC
    async with start_faregate(to_config(config_data), clock=clock) as faregate:
        request = {"budget_key": "hourly", "model": "gpt-fake", "max_output_tokens": MAX_OUTPUT}
        await faregate.client.route(PROMPT, **request)  # type: ignore[arg-type]
        with pytest.raises(BudgetExhausted):
            await faregate.client.route(PROMPT, **request)  # type: ignore[arg-type]

        clock.advance(3599)
        with pytest.raises(BudgetExhausted):
            await faregate.client.route(PROMPT, **request)  # type: ignore[arg-type]
        clock.advance(1)
        reply = await faregate.client.route(PROMPT, **request)  # type: ignore[arg-type]

        assert reply.budget_remaining_nano_usd == 0
        assert await faregate.spent_nano_usd("hourly") == worst_case


async def test_a_request_draws_on_several_budgets_all_or_nothing(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    worst_case = GPT_PRICE.cost_nano_usd(_input_tokens(), MAX_OUTPUT)
    config_data["budgets"]["agent"] = {"limit_usd": _usd(worst_case * 3 // 2)}
    upstream.default = Script(usage=(_input_tokens(), MAX_OUTPUT))  # costs the worst case
    async with start_faregate(to_config(config_data)) as faregate:

        async def call() -> router_pb2.RouteResponse:
            return await faregate.client.route(
                PROMPT,
                budget_key="agent",
                additional_budget_keys=["team"],
                model="gpt-fake",
                max_output_tokens=MAX_OUTPUT,
            )

        served = await call()
        with pytest.raises(BudgetExhausted) as exhausted:
            await call()  # the agent's half a worst case left is too little

        assert exhausted.value.budget_key == "agent"
        assert await faregate.spent_nano_usd("agent") == served.cost_nano_usd
        assert await faregate.spent_nano_usd("team") == served.cost_nano_usd
        assert await faregate.reserved_nano_usd("team") == 0
        assert served.budget_remaining_nano_usd == worst_case * 3 // 2 - served.cost_nano_usd
        assert len(upstream.received) == 1


@pytest.mark.parametrize(
    ("additional", "reason"),
    [(["team"], "INVALID_REQUEST"), ([""], "INVALID_REQUEST"), (["nope"], "BUDGET_NOT_FOUND")],
)
async def test_bad_additional_budgets_are_refused_and_charge_nothing(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    additional: list[str],
    reason: str,
) -> None:
    async with start_faregate(to_config(config_data)) as faregate:
        with pytest.raises(FaregateError) as refused:
            await faregate.client.route("hi", budget_key="team", additional_budget_keys=additional)

        assert refused.value.reason == reason
        assert await faregate.reserved_nano_usd() == 0
        assert await faregate.spent_nano_usd() == 0
