"""The cost rules, settled for real: what each way of ending a request is
charged, in the ledger and the budget, to the nano-dollar.

One model at 1 USD per million input tokens and 2 per million output tokens
(1 000 and 2 000 nano-USD a token), an output cap of 100 tokens; the state is
the real in-memory store, its ledger read back after each settlement."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from contextlib import AbstractContextManager

import aiohttp
import pytest
import yaml
from faregate_server.config.load import parse_config
from faregate_server.domain import (
    ChatMessage,
    ImplausibleUsage,
    ReportedSoFar,
    Role,
    RouteCall,
    Usage,
    UsageFlaw,
)
from faregate_server.routing.hooks import NO_HOOKS, AttemptSpan
from faregate_server.routing.planner import Plan, Planner
from faregate_server.routing.scope import CallScope
from faregate_server.routing.selection import Selector
from faregate_server.routing.settlement import Charge, Lease, Settlement, charge, counted_usage
from faregate_server.state.ledger import MemoryLedger, SpendRecord
from faregate_server.state.store import LocalState
from faregate_server.upstream.catalog import Catalog, Deployment
from faregate_server.upstream.tokens import INLINE_COUNT_CHARS, RunningCount
from faregate_server.upstream.usage import anthropic_usage, usage_cost_nano_usd

from tests.fakes.clock import FakeClock

_CAP_TOKENS = 100
_INPUT_NANO_USD = 1_000
_OUTPUT_NANO_USD = 2_000


class _Overruns:
    """Hooks that note each overrun and do nothing else."""

    def __init__(self) -> None:
        self.overruns: list[tuple[str, int]] = []

    def span(self, name: str, model: str = "") -> AbstractContextManager[object]:
        return NO_HOOKS.span(name, model)

    def pool_wait(self, deployment: Deployment) -> AbstractContextManager[object] | None:
        return None

    def attempt(self, deployment: Deployment) -> AttemptSpan:
        return NO_HOOKS.attempt(deployment)

    def implausible_usage(self, deployment: Deployment, usage: ImplausibleUsage) -> None:
        pass

    def overrun(self, deployment: Deployment, overrun_nano_usd: int) -> None:
        self.overruns.append((deployment.name, overrun_nano_usd))

    def stream_cut(self, deployment: Deployment) -> None:
        pass


class _Books:
    """A settlement over real state, and a lease held for one request."""

    def __init__(
        self,
        plan: Plan,
        lease: Lease,
        settlement: Settlement,
        state: LocalState,
        ledger: MemoryLedger,
        hooks: _Overruns,
    ) -> None:
        self.hooks = hooks
        self.plan = plan
        self.lease = lease
        self.settlement = settlement
        self.state = state
        self.ledger = ledger
        self.commits = 0
        self.scope = CallScope(deadline_s=math.inf, on_commit=self._committing)

    def _committing(self) -> None:
        self.commits += 1

    async def settle(self, charged: Charge, attempts: int = 1) -> int:
        return await self.settlement.settle(
            self.plan, self.lease, charged, "succeeded", attempts, self.scope
        )

    async def settle_interrupted(
        self, delivered: RunningCount, reported: ReportedSoFar | None = None
    ) -> None:
        await self.settlement.settle_interrupted(
            self.plan, self.lease, delivered, reported or ReportedSoFar(), 1, self.scope
        )

    async def count_answer_or_settle(self, text: str) -> Usage:
        return await self.settlement.count_answer_or_settle(
            self.plan, self.lease, text, 1, self.scope
        )

    @property
    def input_tokens(self) -> int:
        return self.lease.option.input_tokens

    @property
    def reserved_nano_usd(self) -> int:
        return self.lease.holding.amount_nano_usd

    async def records(self) -> list[SpendRecord]:
        return [record for _, record in await self.ledger.query("b", "", 10, None)]

    async def spent_and_reserved(self) -> tuple[int, int]:
        snapshot = await self.state.budget("b")
        return snapshot.spent_nano_usd, snapshot.reserved_nano_usd


@pytest.fixture
async def books() -> _Books:
    config = parse_config(
        yaml.safe_dump(
            {
                "models": {
                    "m": {
                        "provider": "sim",
                        "quality": 0.5,
                        "input_usd_per_mtok": 1,
                        "output_usd_per_mtok": 2,
                    }
                },
                "routes": {"default": ["m"]},
                "budgets": {"b": {"limit_usd": 100, "window": "none"}},
                "auth": {"enabled": False},
            }
        )
    )
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        catalog = Catalog(config, session, clock)
    ledger = MemoryLedger()
    state = LocalState(config, clock, ledger)
    hooks = _Overruns()
    settlement = Settlement(state, clock, hooks)
    call = RouteCall(
        model="", messages=(ChatMessage(Role.USER, "hello there"),), agent="coder",
        budget_key="b", max_output_tokens=_CAP_TOKENS, temperature=None, metadata={},
    )  # fmt: skip
    plan = await Planner(Selector(state.limits, clock, random.Random(0))).plan(call, catalog)
    lease = await settlement.first_lease(plan)
    return _Books(plan, lease, settlement, state, ledger, hooks)


def _cost(input_tokens: int, output_tokens: int) -> int:
    return input_tokens * _INPUT_NANO_USD + output_tokens * _OUTPUT_NANO_USD


async def test_the_lease_reserves_the_worst_case(books: _Books) -> None:
    assert books.reserved_nano_usd == _cost(books.input_tokens, _CAP_TOKENS)
    assert await books.spent_and_reserved() == (0, books.reserved_nano_usd)


async def test_reported_usage_is_charged_over_the_count(books: _Books) -> None:
    charged = charge(books.lease, Usage(5, 7), counted_usage(books.lease, 50))

    assert charged == Charge(Usage(5, 7), 19_000)
    remaining = await books.settle(charged)

    (record,) = await books.records()
    assert (record.input_tokens, record.output_tokens, record.cost_nano_usd) == (5, 7, 19_000)
    assert (record.outcome, record.usage_flaw, record.reported_usage) == ("succeeded", "", "")
    assert record.reserved_nano_usd == books.reserved_nano_usd
    assert (record.agent, record.model, record.route) == ("coder", "m", "default")
    assert await books.spent_and_reserved() == (19_000, 0)
    assert remaining == 100_000_000_000 - 19_000
    assert books.commits == 1  # the drain was told: past its commit point


async def test_without_a_report_the_count_is_charged(books: _Books) -> None:
    charged = charge(books.lease, None, counted_usage(books.lease, 40))

    assert charged == Charge(Usage(books.input_tokens, 40), _cost(books.input_tokens, 40))
    await books.settle(charged)
    assert await books.spent_and_reserved() == (charged.cost_nano_usd, 0)


def test_a_count_over_the_output_cap_is_charged_the_cap(books: _Books) -> None:
    assert counted_usage(books.lease, 5_000) == Usage(books.input_tokens, _CAP_TOKENS)


def test_no_count_is_charged_past_the_reservation(books: _Books) -> None:
    # A count is an estimate: whatever it comes to, the worst case bounds it.
    charged = charge(books.lease, None, Usage(1_000_000, 1_000_000))

    assert charged == Charge(Usage(1_000_000, 1_000_000), books.reserved_nano_usd)


async def test_a_report_past_the_reservation_is_charged_in_full_as_an_overrun(
    books: _Books, caplog: pytest.LogCaptureFixture
) -> None:
    # A believable report (the prompt counted short by faregate): the bill.
    reported = Usage(books.input_tokens + 500, _CAP_TOKENS)
    cost = _cost(reported.input_tokens, reported.output_tokens)
    overrun = cost - books.reserved_nano_usd
    assert overrun == 500 * _INPUT_NANO_USD

    charged = charge(books.lease, reported, None)
    with caplog.at_level(logging.WARNING, "faregate_server.routing.settlement"):
        await books.settle(charged)

    assert charged == Charge(reported, cost)
    (record,) = await books.records()
    assert (record.reserved_nano_usd, record.cost_nano_usd) == (books.reserved_nano_usd, cost)
    assert (record.usage_flaw, record.reported_usage) == ("", "")
    assert await books.spent_and_reserved() == (cost, 0)
    assert books.hooks.overruns == [("m", overrun)]
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"model m cost {cost} nano-USD, {overrun} more than its reservation of" in line


async def test_a_charge_within_the_reservation_is_no_overrun(books: _Books) -> None:
    await books.settle(charge(books.lease, Usage(books.input_tokens, _CAP_TOKENS), None))

    (record,) = await books.records()
    assert record.cost_nano_usd == record.reserved_nano_usd
    assert books.hooks.overruns == []


async def test_implausible_usage_is_charged_the_reservation_and_recorded(books: _Books) -> None:
    implausible = ImplausibleUsage(UsageFlaw.NEGATIVE, '{"input_tokens":-3,"output_tokens":2}')

    charged = charge(books.lease, implausible, None)

    assert charged == Charge(
        Usage(books.input_tokens, _CAP_TOKENS), books.reserved_nano_usd, implausible
    )
    await books.settle(charged, attempts=2)
    (record,) = await books.records()
    assert (record.usage_flaw, record.reported_usage) == ("negative", implausible.reported)
    assert (record.output_tokens, record.attempts) == (_CAP_TOKENS, 2)
    assert await books.spent_and_reserved() == (books.reserved_nano_usd, 0)


async def test_an_interrupted_stream_is_charged_what_was_delivered(books: _Books) -> None:
    delivered = RunningCount(books.lease.option.deployment.counter)
    for chunk in ("Hello", ",", " world"):
        delivered.add(chunk)
    output_tokens = delivered.tokens()

    await books.settle_interrupted(delivered)

    (record,) = await books.records()
    cost = _cost(books.input_tokens, output_tokens)
    assert (record.outcome, record.output_tokens, record.cost_nano_usd) == (
        "interrupted",
        output_tokens,
        cost,
    )
    assert await books.spent_and_reserved() == (cost, 0)


async def test_a_stream_interrupted_before_any_output_is_released_whole(books: _Books) -> None:
    nothing = RunningCount(books.lease.option.deployment.counter)

    await books.settle_interrupted(nothing)

    assert await books.records() == []
    assert await books.spent_and_reserved() == (0, 0)
    assert books.commits == 0


async def test_a_released_lease_charges_nothing(books: _Books) -> None:
    books.settlement.release(books.lease)

    assert await books.records() == []
    assert await books.spent_and_reserved() == (0, 0)


async def test_an_answer_interrupted_while_counted_is_charged_at_its_cap(books: _Books) -> None:
    long_answer = "word " * (INLINE_COUNT_CHARS // 4)  # counted in a worker thread
    counting = asyncio.ensure_future(books.count_answer_or_settle(long_answer))
    await asyncio.sleep(0)  # now awaiting the count

    counting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await counting
    (record,) = await books.records()
    assert (record.outcome, record.output_tokens) == ("interrupted", _CAP_TOKENS)
    assert await books.spent_and_reserved() == (books.reserved_nano_usd, 0)


async def test_a_whole_answer_is_counted_when_it_reports_no_usage(books: _Books) -> None:
    counter = books.lease.option.deployment.counter

    usage = await books.count_answer_or_settle("Hello, world")

    assert usage == Usage(books.input_tokens, counter.count_text("Hello, world"))
    assert await books.records() == []  # counted, not yet settled
    books.settlement.release(books.lease)


def _reported(raw: dict[str, object]) -> ReportedSoFar:
    reported = ReportedSoFar()
    reported.raw, reported.read = raw, anthropic_usage
    return reported


def _delivered(books: _Books, *chunks: str) -> RunningCount:
    delivered = RunningCount(books.lease.option.deployment.counter)
    for chunk in chunks:
        delivered.add(chunk)
    return delivered


async def test_a_stream_cut_after_its_input_was_reported_is_charged_the_reported_input(
    books: _Books,
) -> None:
    # Anthropic's message_start: the whole input, part of it read from the cache.
    input_tokens = books.input_tokens + 40
    reported = _reported(
        {"input_tokens": 10, "cache_read_input_tokens": input_tokens - 10, "output_tokens": 1}
    )
    delivered = _delivered(books, "Hello", ",", " world")

    await books.settle_interrupted(delivered, reported)

    (record,) = await books.records()
    assert (record.input_tokens, record.cached_input_tokens) == (input_tokens, input_tokens - 10)
    assert record.output_tokens == delivered.tokens()  # more than the 1 reported
    assert record.cost_nano_usd == usage_cost_nano_usd(
        books.lease.option.deployment.config.price,
        Usage(input_tokens, delivered.tokens(), cached_input_tokens=input_tokens - 10),
    )
    assert record.cost_nano_usd <= books.reserved_nano_usd


async def test_a_stream_cut_after_more_output_was_reported_than_delivered_is_charged_it(
    books: _Books,
) -> None:
    # Thinking the caller never saw, counted by the provider's running total.
    reported = _reported({"input_tokens": 1, "output_tokens": 30})

    await books.settle_interrupted(_delivered(books, "Hi"), reported)

    (record,) = await books.records()
    assert (record.input_tokens, record.output_tokens) == (books.input_tokens, 30)


@pytest.mark.parametrize(
    "raw",
    [
        {"input_tokens": 10**9, "output_tokens": 1},  # over the context window
        {"input_tokens": -5, "output_tokens": 1},
        {"input_tokens": "lots", "output_tokens": 1},
        {},
    ],
)
async def test_a_report_not_believed_leaves_a_cut_stream_charged_its_count(
    books: _Books, raw: dict[str, object]
) -> None:
    delivered = _delivered(books, "Hello", " world")

    await books.settle_interrupted(delivered, _reported(raw))

    (record,) = await books.records()
    assert (record.input_tokens, record.output_tokens) == (books.input_tokens, delivered.tokens())
    assert record.cost_nano_usd == _cost(books.input_tokens, delivered.tokens())
