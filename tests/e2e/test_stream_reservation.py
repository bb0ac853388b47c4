"""A stream never spends past its reservation: an upstream that ignores the
output cap is cut once the delivered output reaches it, its connection
dropped, and the stream finishes LENGTH, charged what was delivered, so no
budget goes below zero, however many such streams race for it."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from faregate.v1 import router_pb2
from faregate_client import BudgetExhausted
from faregate_server.config.tokenizers import Tokenizer
from faregate_server.upstream.tokens import EstimatingCounter, TiktokenCounter, TokenCounter

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

MAX_OUTPUT = 10
PROMPT = "Write until you are told to stop."
FLOOD = 2_000
"""Chunks of one token each the upstream would send, far past the cap."""
PATIENT_BREAKER = {"consecutive_failures": 1000, "min_requests": 1000}
_COUNTERS: dict[str, TokenCounter] = {
    "gpt-fake": TiktokenCounter(Tokenizer.CL100K_BASE),
    "claude-fake": EstimatingCounter(),
}
"""How faregate counts each test model's output (tests/conftest.py's tokenizers)."""


def _ignoring_the_cap(gate: asyncio.Event | None = None) -> Script:
    """An upstream that ignores max_tokens: it streams far past the cap and
    then holds the connection open, so it finishes only if it is never cut;
    it reports a usage block of everything it would have sent."""
    return Script(
        chunks=[" w"] * FLOOD,
        usage=(20, FLOOD),
        finish_reason="stop",
        pause_after=FLOOD // 2,
        resume=asyncio.Event(),  # never set
        gate=gate,
    )


def _counted(counter: TokenCounter, texts: list[str]) -> int:
    """faregate's count of delivered texts: at least a token a chunk."""
    return max(counter.count_text("".join(texts)), len(texts))


def _usd(nano_usd: int) -> str:
    return str(Decimal(nano_usd) / 10**9)


async def _metrics(faregate: Faregate) -> list[str]:
    port = faregate.running.http_port
    assert port is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return (await response.text()).splitlines()


@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
async def test_a_stream_whose_server_ignores_the_output_cap_is_cut_at_the_reservation(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream, model: str
) -> None:
    upstream.default = _ignoring_the_cap()

    async with start_faregate(to_config(config_data)) as faregate:
        stream = faregate.client.stream_route(
            PROMPT, budget_key="team", model=model, max_output_tokens=MAX_OUTPUT
        )
        texts = await read_stream(stream)
        # The cut closes the upstream's connection: its handler is cancelled
        # mid-stream, and it never finishes.
        await upstream.wait_for_disconnects(1)
        spent = await faregate.spent_nano_usd()
        reserved = await faregate.reserved_nano_usd()
        [(_, record)] = await faregate.running.state.spend("team", "", 10, None)
        metrics = await _metrics(faregate)

    # Relayed until faregate's count is past the cap whatever the model's
    # (`past_cap`: a little slack for tiktoken, twice the cap for the
    # estimate), then cut.
    counter = _COUNTERS[model]
    cut_at = counter.past_cap(MAX_OUTPUT)
    assert _counted(counter, texts[:-1]) < cut_at <= _counted(counter, texts)
    assert set(texts) == {" w"}
    assert stream.start is not None
    assert stream.finish is not None
    assert stream.finish.finish_reason == router_pb2.FINISH_REASON_LENGTH
    assert stream.finish.usage.output_tokens == MAX_OUTPUT
    # Delivered past the cap, the reservation's output: charged exactly it.
    assert stream.finish.cost_nano_usd == stream.start.reserved_nano_usd
    assert spent == stream.finish.cost_nano_usd
    assert reserved == 0
    assert upstream.completed == 0
    assert (record.outcome, record.output_tokens) == ("succeeded", MAX_OUTPUT)
    assert record.cost_nano_usd <= record.reserved_nano_usd
    assert f'faregate_stream_cuts_total{{model="{model}"}} 1.0' in metrics


async def test_a_stream_cut_in_a_tool_call_is_charged_no_more_than_its_reservation(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    # Tool-call arguments are output too: an upstream streaming them past the
    # cap is cut as text is.
    deltas = [
        {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]}
    ] + [{"tool_calls": [{"index": 0, "function": {"arguments": " w"}}]}] * FLOOD
    upstream.default = Script(
        chunks=[], stream_deltas=deltas, finish_reason="tool_calls", usage=(20, FLOOD)
    )

    async with start_faregate(to_config(config_data)) as faregate:
        stream = faregate.client.stream_route(
            PROMPT, budget_key="team", model="gpt-fake", max_output_tokens=MAX_OUTPUT
        )
        await read_stream(stream)
        spent = await faregate.spent_nano_usd()
        reserved = await faregate.reserved_nano_usd()

    assert stream.start is not None
    assert stream.finish is not None
    assert stream.finish.finish_reason == router_pb2.FINISH_REASON_LENGTH
    assert spent == stream.finish.cost_nano_usd <= stream.start.reserved_nano_usd
    assert reserved == 0


@pytest.mark.parametrize(
    ("model", "word", "overcounted"),
    [
        ("gpt-fake", " w", False),
        # Five bytes a token: the estimate counts it as two, so faregate's
        # count passes the cap well before the model's does.
        ("claude-fake", " word", True),
    ],
)
async def test_an_honest_stream_that_ends_at_its_cap_is_not_cut(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    model: str,
    word: str,
    overcounted: bool,
) -> None:
    upstream.default = Script(
        chunks=[word] * MAX_OUTPUT, usage=(12, MAX_OUTPUT), finish_reason="length"
    )

    async with start_faregate(to_config(config_data)) as faregate:
        stream = faregate.client.stream_route(
            PROMPT, budget_key="team", model=model, max_output_tokens=MAX_OUTPUT
        )
        texts = await read_stream(stream)
        metrics = await _metrics(faregate)

    # faregate's own count of what it relayed is past the cap exactly when
    # the case says the model is counted high.
    assert (_counted(_COUNTERS[model], texts) > MAX_OUTPUT) is overcounted
    assert texts == [word] * MAX_OUTPUT
    assert stream.finish is not None
    assert stream.finish.finish_reason == router_pb2.FINISH_REASON_LENGTH
    assert (stream.finish.usage.input_tokens, stream.finish.usage.output_tokens) == (
        12,
        MAX_OUTPUT,
    )
    assert upstream.completed == 1
    assert upstream.disconnected_at == []
    assert not any(line.startswith("faregate_stream_cuts_total{") for line in metrics)


async def test_streams_that_ignore_the_cap_racing_for_a_budget_never_take_it_below_zero(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    fits, total = 12, 40
    # The streams wait at the gate for their headers, which idle_timeout_s
    # bounds: long enough for the refusals to end on a loaded machine.
    config_data["models"]["gpt-fake"].update(
        workers=16, queue=total, breaker=PATIENT_BREAKER, idle_timeout_s=30.0
    )
    # The worst case of one stream, as faregate reserves it.
    async with start_faregate(to_config(config_data)) as faregate:
        probe = faregate.client.stream_route(
            PROMPT, budget_key="team", model="gpt-fake", max_output_tokens=MAX_OUTPUT
        )
        upstream.default = Script(chunks=[" w"], usage=(1, 1))
        await read_stream(probe)
        assert probe.start is not None
        worst_case = probe.start.reserved_nano_usd
    probed = upstream.completed

    config_data["budgets"]["race"] = {"limit_usd": _usd(fits * worst_case)}
    gate = asyncio.Event()
    upstream.default = _ignoring_the_cap(gate)
    async with start_faregate(to_config(config_data)) as faregate:

        async def call() -> router_pb2.StreamRouteResponse.StreamFinish:
            stream = faregate.client.stream_route(
                PROMPT, budget_key="race", model="gpt-fake", max_output_tokens=MAX_OUTPUT
            )
            await read_stream(stream)
            assert stream.finish is not None
            return stream.finish

        calls = [asyncio.create_task(call()) for _ in range(total)]
        # Every upstream waits until each call was admitted or refused, so
        # the admitted ones are all cut on a budget held in full.
        await eventually(lambda: sum(c.done() for c in calls) >= total - fits, timeout_s=30)
        assert await faregate.reserved_nano_usd("race") == fits * worst_case
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        await upstream.wait_for_disconnects(fits)
        snapshot = await faregate.running.state.budget("race")

    finished = [r for r in results if isinstance(r, router_pb2.StreamRouteResponse.StreamFinish)]
    assert all(isinstance(r, BudgetExhausted) for r in results if r not in finished)
    assert len(finished) == fits
    assert all(r.finish_reason == router_pb2.FINISH_REASON_LENGTH for r in finished)
    assert all(r.cost_nano_usd == worst_case for r in finished)
    assert snapshot.reserved_nano_usd == 0
    assert snapshot.spent_nano_usd == fits * worst_case
    assert snapshot.remaining_nano_usd == 0
    assert upstream.completed == probed  # no stream past its cap finished
