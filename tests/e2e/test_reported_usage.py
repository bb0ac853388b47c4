"""Upstreams that lie about usage, end to end: what they report is judged
against what the request made possible, and a lie is charged the reservation,
recorded with what was reported, counted, and held against the model. A
whole answer's believable report past its reservation is the bill: charged
in full as an overrun, bounded by the context window."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from faregate.v1 import admin_pb2, admin_pb2_grpc
from faregate_client import BudgetExhausted, FaregateError, Unavailable
from faregate_server.domain import ChatMessage, Role
from faregate_server.money import Price
from faregate_server.state.export import export_spend
from faregate_server.state.ledger import SpendRecord
from faregate_server.upstream.tokens import TiktokenCounter

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import OMIT, FakeUpstream, Script
from tests.support.eventually import eventually

GPT_PRICE = Price(2_500_000_000, 10_000_000_000)
MAX_OUTPUT = 10
PROMPT = "Count the budgets that fit in this one, then explain how you counted. " * 4
# Every lie counts against its model's breaker: tests that tell many keep it shut.
PATIENT_BREAKER = {"consecutive_failures": 1000, "min_requests": 1000}


def _input_tokens() -> int:
    return TiktokenCounter().count_messages([ChatMessage(Role.USER, PROMPT)])


WORST_CASE = GPT_PRICE.cost_nano_usd(_input_tokens(), MAX_OUTPUT)


def _usd(nano_usd: int) -> str:
    return str(Decimal(nano_usd) / 10**9)


async def _records(faregate: Faregate, budget_key: str) -> list[SpendRecord]:
    return [record for _, record in await faregate.running.state.spend(budget_key, "", 1000, None)]


async def _call(
    faregate: Faregate, rpc: str, budget_key: str, model: str = "gpt-fake"
) -> tuple[int, int]:
    """One request; returns (cost, reserved) as the caller was told them."""
    if rpc == "Route":
        reply = await faregate.client.route(
            PROMPT, budget_key=budget_key, model=model, max_output_tokens=MAX_OUTPUT
        )
        return reply.cost_nano_usd, reply.reserved_nano_usd
    stream = faregate.client.stream_route(
        PROMPT, budget_key=budget_key, model=model, max_output_tokens=MAX_OUTPUT
    )
    await read_stream(stream)
    assert stream.start is not None
    assert stream.finish is not None
    return stream.finish.cost_nano_usd, stream.start.reserved_nano_usd


async def _metrics(faregate: Faregate) -> list[str]:
    port = faregate.running.http_port
    assert port is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return (await response.text()).splitlines()


def _sample(metrics: list[str], series: str) -> float:
    [value] = [line.split(" ")[-1] for line in metrics if line.startswith(series + " ")]
    return float(value)


# A stream is capped at its reservation; a whole answer is charged its
# believable report in full (test_a_whole_answer_past_its_reservation_...).
@pytest.mark.parametrize("rpc", ["StreamRoute"])
async def test_a_lying_upstream_never_overspends_a_budget(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream, rpc: str
) -> None:
    fits, total = 20, 60
    limit = fits * WORST_CASE
    config_data["budgets"]["lie"] = {"limit_usd": _usd(limit)}
    # The streams wait at the gate for their headers, which idle_timeout_s
    # bounds: long enough for the refusals to end on a loaded machine.
    config_data["models"]["gpt-fake"].update(
        workers=16, queue=total, breaker=PATIENT_BREAKER, idle_timeout_s=30.0
    )
    lie = (3 * _input_tokens(), MAX_OUTPUT)  # three times the prompt it was sent
    gate = asyncio.Event()
    upstream.default = Script(usage=lie, gate=gate)

    async with start_faregate(to_config(config_data)) as faregate:
        calls = [asyncio.create_task(_call(faregate, rpc, "lie")) for _ in range(total)]
        # Every answer waits until each call was admitted or refused, so the
        # admitted twenty all settle their lies on a full budget.
        await eventually(lambda: sum(call.done() for call in calls) >= total - fits, timeout_s=30)
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        spent = await faregate.spent_nano_usd("lie")
        print(f"{rpc}: 3x prompt lie, {total} calls: spent {spent / limit:.2f}x the limit")
        assert spent <= limit, f"spent {spent / limit:.2f}x the limit"
        assert await faregate.reserved_nano_usd("lie") == 0
        records = await _records(faregate, "lie")

    served = [result for result in results if isinstance(result, tuple)]
    assert all(isinstance(r, BudgetExhausted) for r in results if not isinstance(r, tuple))
    assert len(served) == fits  # each charged exactly its worst case
    assert all(cost == reserved == WORST_CASE for cost, reserved in served)
    assert spent == limit
    assert len(records) == fits
    reported = json.dumps({"input_tokens": lie[0], "output_tokens": lie[1]}, separators=(",", ":"))
    for record in records:
        assert (record.usage_flaw, record.reported_usage) == ("over_reservation", reported)
        assert (record.input_tokens, record.output_tokens) == (_input_tokens(), MAX_OUTPUT)
        assert record.cost_nano_usd == record.reserved_nano_usd == WORST_CASE


async def test_a_whole_answer_past_its_reservation_is_charged_in_full_within_the_window(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    # Three times the prompt faregate counted: believable (within the context
    # window), so it is the bill. The twenty admitted calls overspend the
    # budget by their overruns, each within the bound the README states, and
    # the budget, below zero, admits nothing more.
    fits, total = 20, 60
    limit = fits * WORST_CASE
    context_window = config_data["models"]["gpt-fake"]["context_window_tokens"]
    config_data["budgets"]["over"] = {"limit_usd": _usd(limit)}
    config_data["models"]["gpt-fake"].update(workers=16, queue=total, breaker=PATIENT_BREAKER)
    reported = (3 * _input_tokens(), MAX_OUTPUT)
    bill = GPT_PRICE.cost_nano_usd(*reported)
    gate = asyncio.Event()
    upstream.default = Script(usage=reported, gate=gate)

    async with start_faregate(to_config(config_data)) as faregate:
        calls = [asyncio.create_task(_call(faregate, "Route", "over")) for _ in range(total)]
        await eventually(lambda: sum(call.done() for call in calls) >= total - fits, timeout_s=30)
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        spent = await faregate.spent_nano_usd("over")
        reserved = await faregate.reserved_nano_usd("over")
        records = await _records(faregate, "over")
        with pytest.raises(BudgetExhausted) as refused:
            await _call(faregate, "Route", "over")
        metrics = await _metrics(faregate)

    served = [result for result in results if isinstance(result, tuple)]
    assert all(isinstance(r, BudgetExhausted) for r in results if not isinstance(r, tuple))
    assert served == [(bill, WORST_CASE)] * fits
    assert spent == fits * bill
    assert reserved == 0
    overrun = bill - WORST_CASE
    assert refused.value.metadata["remainingNanoUsd"] == str(limit - spent)
    assert limit - spent == -fits * overrun
    # The bound: the input believed up to the context window, at the input price.
    input_price = GPT_PRICE.input_nano_usd_per_mtok
    assert overrun <= (context_window - _input_tokens()) * input_price // 10**6
    assert len(records) == fits
    for record in records:
        assert (record.usage_flaw, record.reported_usage) == ("", "")
        assert (record.input_tokens, record.output_tokens) == reported
        assert (record.reserved_nano_usd, record.cost_nano_usd) == (WORST_CASE, bill)
    assert _sample(metrics, 'faregate_overrun_requests_total{model="gpt-fake"}') == fits
    assert _sample(metrics, 'faregate_overrun_nano_usd_total{model="gpt-fake"}') == fits * overrun


async def test_a_whole_answer_is_not_believed_past_the_context_window(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    # One token past the window is a lie, not an overrun: the reservation.
    context_window = config_data["models"]["gpt-fake"]["context_window_tokens"]
    upstream.default = Script(usage=(context_window + 1, MAX_OUTPUT))

    async with start_faregate(to_config(config_data)) as faregate:
        cost, reserved = await _call(faregate, "Route", "team")
        [record] = await _records(faregate, "team")

    assert cost == reserved == WORST_CASE
    assert record.usage_flaw == "over_context_window"


async def test_negative_usage_never_credits_a_budget(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(usage=(-1_000_000, -5))

    cost, reserved = await _call(faregate, "Route", "team")

    assert cost == reserved == WORST_CASE
    assert await faregate.spent_nano_usd() == WORST_CASE
    [record] = await _records(faregate, "team")
    assert record.usage_flaw == "negative"
    assert record.reported_usage == '{"input_tokens":-1000000,"output_tokens":-5}'


@pytest.mark.parametrize("absurd", [10**17, 1e17], ids=["int", "float"])
async def test_absurd_usage_does_not_wedge_the_budget(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    absurd: object,
) -> None:
    config_data["admin"] = {"enabled": True}
    upstream.queue(Script(usage=(absurd, absurd)), Script(usage=(20, 2)))

    async with (
        start_faregate(to_config(config_data)) as faregate,
        grpc.aio.insecure_channel(faregate.target) as channel,
    ):
        lied, _ = await _call(faregate, "Route", "team")
        honest, _ = await _call(faregate, "Route", "team")
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        budget = (await stub.GetBudget(admin_pb2.GetBudgetRequest(key="team"))).budget
        page = await stub.ListSpend(admin_pb2.ListSpendRequest(budget_key="team"))

    assert lied == WORST_CASE
    assert honest == GPT_PRICE.cost_nano_usd(20, 2)
    assert budget.spent_nano_usd == lied + honest
    assert budget.reserved_nano_usd == 0
    flagged = page.entries[-1]  # newest first: the lie is the older
    assert flagged.usage_flaw == (
        "over_context_window" if isinstance(absurd, int) else "not_integer"
    )
    assert json.loads(flagged.reported_usage) == {"input_tokens": absurd, "output_tokens": absurd}
    assert flagged.cost_nano_usd == flagged.reserved_nano_usd == WORST_CASE
    assert page.entries[0].usage_flaw == page.entries[0].reported_usage == ""


# Each lie, and why it is not believed; every provider, both RPCs.
LIES: list[tuple[tuple[Any, Any], str]] = [
    ((3.5, 3), "not_integer"),
    (("12", 3), "not_integer"),
    ((True, 3), "not_integer"),
    ((None, 3), "not_integer"),
    ((1e17, 3), "not_integer"),
    ((-1, 3), "negative"),
    ((OMIT, 3), "missing"),
    ((10**17, 3), "over_context_window"),
    ((11, MAX_OUTPUT + 1), "over_output_cap"),
]


@pytest.mark.parametrize("rpc", ["Route", "StreamRoute"])
@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
async def test_every_kind_of_lie_is_charged_the_reservation_and_recorded(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    rpc: str,
    model: str,
) -> None:
    config_data["models"][model]["breaker"] = PATIENT_BREAKER
    upstream.queue(*(Script(usage=usage) for usage, _ in LIES))

    async with start_faregate(to_config(config_data)) as faregate:
        charged = [await _call(faregate, rpc, "team", model) for _ in LIES]
        spent = await faregate.spent_nano_usd()
        reserved = await faregate.reserved_nano_usd()
        records = list(reversed(await _records(faregate, "team")))

    assert all(cost == held for cost, held in charged)
    assert spent == sum(cost for cost, _ in charged)
    assert reserved == 0
    assert [record.usage_flaw for record in records] == [flaw for _, flaw in LIES]
    for record, ((reported_in, reported_out), _) in zip(records, LIES, strict=True):
        reported = json.loads(record.reported_usage)
        assert reported.get("input_tokens", OMIT) == reported_in
        assert reported["output_tokens"] == reported_out


async def test_implausible_answers_are_counted_and_open_the_breaker(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["models"]["gpt-fake"]["breaker"] = {"consecutive_failures": 3, "cooldown_s": 60}
    upstream.default = Script(usage=(-1, 3))

    async with start_faregate(to_config(config_data)) as faregate:
        answered = [await _call(faregate, "Route", "team") for _ in range(3)]
        breaker = faregate.running.catalog.deployments["gpt-fake"].breaker
        assert breaker.state.value == "open"
        with pytest.raises(Unavailable):
            await _call(faregate, "Route", "team")
        # The healthy model of the route serves meanwhile.
        fallback = await faregate.client.route(PROMPT, budget_key="team")
        port = faregate.running.http_port
        assert port is not None
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            metrics = (await response.text()).splitlines()

    assert len(answered) == 3  # the callers got their answers all the same
    assert fallback.model_used == "cheap-fake"
    assert 'faregate_implausible_usage_total{flaw="negative",model="gpt-fake"} 3.0' in metrics


async def test_an_honest_answer_cut_at_its_cap_a_token_over_the_count_is_charged_not_blamed(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    # A provider may count a prompt a token or two higher than faregate (its
    # own framing); with the output at its cap that costs just over the
    # reservation. A whole answer is charged it in full (the bill), not
    # flagged, and the model is not failed.
    config_data["models"]["gpt-fake"]["breaker"] = {"consecutive_failures": 3, "cooldown_s": 60}
    upstream.default = Script(
        usage=(_input_tokens() + 2, MAX_OUTPUT),
        finish_reason="length",
        chunks=[" w"] * MAX_OUTPUT,
    )

    async with start_faregate(to_config(config_data)) as faregate:
        answered = [await _call(faregate, "Route", "team") for _ in range(5)]
        breaker = faregate.running.catalog.deployments["gpt-fake"].breaker
        records = await _records(faregate, "team")
        reserved = await faregate.reserved_nano_usd()

    bill = GPT_PRICE.cost_nano_usd(_input_tokens() + 2, MAX_OUTPUT)
    assert breaker.state.value == "closed"
    assert answered == [(bill, WORST_CASE)] * 5
    assert {record.usage_flaw for record in records} == {""}
    assert {record.cost_nano_usd - record.reserved_nano_usd for record in records} == {
        bill - WORST_CASE
    }
    assert reserved == 0


@pytest.mark.parametrize(
    ("model", "event"),
    [
        ("gpt-fake", b"data: [1]\n\n"),
        ("gpt-fake", b'data: {"choices": ["x"]}\n\n'),
        ("gpt-fake", b"data: " + b"[" * 200_000 + b"\n\n"),
        ("claude-fake", b'event: message_start\ndata: {"message": "x"}\n\n'),
        ("claude-fake", b'event: content_block_delta\ndata: {"delta": []}\n\n'),
    ],
    ids=["list-chunk", "string-choice", "nested-past-depth", "string-message", "list-delta"],
)
async def test_stream_json_of_the_wrong_shape_is_a_malformed_answer(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    model: str,
    event: bytes,
) -> None:
    upstream.default = Script(raw_sse=[event])

    async with start_faregate(to_config(config_data)) as faregate:
        stream = faregate.client.stream_route("hi", budget_key="team", model=model)
        with pytest.raises(Unavailable) as raised:
            await read_stream(stream)
        reserved = await faregate.reserved_nano_usd()

    assert raised.value.reason == "UPSTREAM_UNAVAILABLE"
    assert "malformed answer" in str(raised.value)
    assert reserved == 0


async def test_a_long_answer_without_usage_is_charged_even_if_the_caller_leaves_while_it_is_counted(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    # A long answer is counted in a worker thread, after its lease was won;
    # a deadline that passes meanwhile must neither leak the reservation nor
    # lose the charge for an answer the provider already produced.
    config_data["models"]["gpt-fake"]["max_output_tokens"] = 4096
    text = "".join(random.Random(0).choices("ab", k=2_500_000))  # a second or more of counting
    upstream.default = Script(chunks=[text], usage=None)

    async with start_faregate(to_config(config_data)) as faregate:
        with contextlib.suppress(FaregateError):
            await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=0.5)

        async def settled() -> bool:
            return await faregate.reserved_nano_usd() == 0  # no event to wait on

        await eventually(settled, interval_s=0.05)
        [record] = await _records(faregate, "team")

    assert record.cost_nano_usd == record.reserved_nano_usd > 0
    assert record.output_tokens == 4096


async def test_an_innocent_request_beside_a_poisoned_one_is_charged_and_durable(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    config_data["state"] = {"backend": "sqlite", "path": str(tmp_path / "ledger.db")}
    config_data["models"]["gpt-fake"]["workers"] = 16
    gate = asyncio.Event()
    innocent = 10
    # One answer claims 1e17 tokens; all are let go at once, so their spend
    # records share the ledger's transactions.
    upstream.queue(
        Script(gate=gate, usage=(10**17, 10**17)),
        *(Script(gate=gate, usage=(20, 2)) for _ in range(innocent)),
    )

    async with start_faregate(to_config(config_data)) as faregate:
        calls = [asyncio.create_task(_call(faregate, "Route", "team")) for _ in range(1 + innocent)]
        await upstream.wait_for_requests(1 + innocent)
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        spent = await faregate.spent_nano_usd()

    failed = [result for result in results if isinstance(result, FaregateError)]
    assert failed == []
    costs = sorted(result[0] for result in results if isinstance(result, tuple))
    assert costs == [GPT_PRICE.cost_nano_usd(20, 2)] * innocent + [WORST_CASE]
    assert spent == sum(costs)
    async with start_faregate(to_config(config_data)) as restarted:
        assert await restarted.spent_nano_usd() == spent
        assert len(await _records(restarted, "team")) == 1 + innocent
    exported = io.StringIO()
    await export_spend(to_config(config_data), "", "", exported)
    lines = [json.loads(line) for line in exported.getvalue().splitlines()]
    [flagged] = [line for line in lines if line["usage_flaw"]]
    assert flagged["usage_flaw"] == "over_context_window"
    assert json.loads(flagged["reported_usage"]) == {
        "input_tokens": 10**17,
        "output_tokens": 10**17,
    }


@pytest.mark.parametrize("rpc", ["Route", "StreamRoute"])
async def test_an_upstream_past_its_cap_without_usage_is_charged_at_most_the_reservation(
    faregate: Faregate, upstream: FakeUpstream, rpc: str
) -> None:
    # No usage, and ten times the output it was asked for: the count is all
    # there is, and it may not exceed the reservation either.
    upstream.default = Script(usage=None, chunks=[" word"] * (10 * MAX_OUTPUT))

    cost, reserved = await _call(faregate, rpc, "team")

    assert cost == reserved == WORST_CASE
    assert await faregate.spent_nano_usd() == WORST_CASE
    [record] = await _records(faregate, "team")
    assert (record.usage_flaw, record.cost_nano_usd) == ("", WORST_CASE)
    # The record says what was charged for: the output at its cap.
    assert (record.input_tokens, record.output_tokens) == (_input_tokens(), MAX_OUTPUT)
