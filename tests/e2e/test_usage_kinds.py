"""Usage as each provider documents it, end to end: cached input, cache
writes (five-minute and one-hour), reasoning, and reasoning outside
`completion_tokens`, each charged to the nano-dollar at the hand-computed sum
of its kinds, and the counts carried to the caller, the ledger, export-spend
and the AdminService's spend entries."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from faregate.v1 import admin_pb2, admin_pb2_grpc, router_pb2
from faregate_client import BudgetExhausted, FaregateError, StreamInterrupted
from faregate_server.domain import ChatMessage, Role
from faregate_server.state.export import export_spend
from faregate_server.telemetry.request_log import LOGGER_NAME
from faregate_server.upstream.tokens import TiktokenCounter

from tests.conftest import StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

PROMPT = "Summarise the cached system prompt."
COUNTS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "cache_write_1h_input_tokens",
    "reasoning_tokens",
)


@dataclass(frozen=True)
class Case:
    model: str
    block: dict[str, Any]
    """The upstream's usage block, as the provider documents it."""
    counts: tuple[int, int, int, int, int, int]
    """faregate's Usage of it, in the order of COUNTS."""
    cost_nano_usd: int
    """Priced by hand (see each case)."""


CASES = {
    # The issue's: 50,000 prompt tokens of which 48,000 cached, 300 out, at
    # $2.50 / $1.25 cached / $10: 2,000 x 2,500 + 48,000 x 1,250 + 300 x 10,000.
    "openai-cached-input": Case(
        "gpt-fake",
        {
            "prompt_tokens": 50_000,
            "completion_tokens": 300,
            "total_tokens": 50_300,
            "prompt_tokens_details": {"cached_tokens": 48_000, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        (50_000, 300, 48_000, 0, 0, 0),
        68_000_000,
    ),
    # Reasoning is part of completion_tokens, priced as output:
    # 1,000 x 2,500 + 2,000 x 10,000.
    "openai-reasoning": Case(
        "gpt-fake",
        {
            "prompt_tokens": 1_000,
            "completion_tokens": 2_000,
            "total_tokens": 3_000,
            "completion_tokens_details": {"reasoning_tokens": 1_500},
        },
        (1_000, 2_000, 0, 0, 0, 1_500),
        22_500_000,
    ),
    # Gemini's compatible endpoint: thinking only in the total, so the output
    # is 1,725 - 758 = 967: 758 x 2,500 + 967 x 10,000.
    "usage-outside-completion-tokens": Case(
        "gpt-fake",
        {"prompt_tokens": 758, "completion_tokens": 102, "total_tokens": 1_725},
        (758, 967, 0, 0, 0, 865),
        11_565_000,
    ),
    # The issue's: 10 uncached, 2,000 written (five-minute), 30,000 read, 12
    # out, at $3 / $3.75 / $0.30 / $15:
    # 10 x 3,000 + 2,000 x 3,750 + 30,000 x 300 + 12 x 15,000.
    "anthropic-cache-read-and-write": Case(
        "claude-fake",
        {
            "input_tokens": 10,
            "cache_creation_input_tokens": 2_000,
            "cache_read_input_tokens": 30_000,
            "output_tokens": 12,
        },
        (32_010, 12, 30_000, 2_000, 0, 0),
        16_710_000,
    ),
    # The same with the writes split 1,500 five-minute and 500 one-hour ($6):
    # 10 x 3,000 + 1,500 x 3,750 + 500 x 6,000 + 30,000 x 300 + 12 x 15,000.
    "anthropic-cache-read-5m-and-1h-writes": Case(
        "claude-fake",
        {
            "input_tokens": 10,
            "cache_creation_input_tokens": 2_000,
            "cache_read_input_tokens": 30_000,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 1_500,
                "ephemeral_1h_input_tokens": 500,
            },
            "output_tokens": 12,
            "service_tier": "standard",
        },
        (32_010, 12, 30_000, 2_000, 500, 0),
        17_835_000,
    ),
}
# Output caps whose reservation covers each case's cost (the reservation's
# worst case is the counted prompt and the cap, at the input and output prices).
MAX_OUTPUT = {"gpt-fake": 7_000, "claude-fake": 2_000}


def _priced(config_data: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The test config with cache prices, room for the cases, a ledger on disk and admin on."""
    models = config_data["models"]
    models["gpt-fake"].update(
        cached_input_usd_per_mtok=1.25, context_window_tokens=200_000, max_output_tokens=8_000
    )
    models["claude-fake"].update(
        cache_write_usd_per_mtok=3.75,
        cache_write_1h_usd_per_mtok=6.00,
        cached_input_usd_per_mtok=0.30,
        context_window_tokens=200_000,
        max_output_tokens=4_000,
    )
    config_data["state"] = {"backend": "sqlite", "path": str(tmp_path / "ledger.db")}
    config_data["admin"] = {"enabled": True}
    return config_data


def _counts(message: Any) -> tuple[int, ...]:
    if isinstance(message, dict):
        return tuple(message[name] for name in COUNTS)
    return tuple(getattr(message, name) for name in COUNTS)


@pytest.mark.parametrize("rpc", ["Route", "StreamRoute"])
@pytest.mark.parametrize("name", list(CASES))
async def test_each_kind_of_token_is_charged_at_its_price_and_carried_everywhere(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    tmp_path: Path,
    rpc: str,
    name: str,
) -> None:
    case = CASES[name]
    data = _priced(config_data, tmp_path)
    upstream.queue(
        Script(
            usage_block=case.block,
            chunks=["One", " two", " three"],
            usage_in_every_chunk=case.model == "gpt-fake",
        )
    )
    cap = MAX_OUTPUT[case.model]

    async with (
        start_faregate(to_config(data)) as faregate,
        grpc.aio.insecure_channel(faregate.target) as channel,
    ):
        if rpc == "Route":
            reply = await faregate.client.route(
                PROMPT, budget_key="team", model=case.model, max_output_tokens=cap
            )
            usage, cost, reserved = reply.usage, reply.cost_nano_usd, reply.reserved_nano_usd
        else:
            stream = faregate.client.stream_route(
                PROMPT, budget_key="team", model=case.model, max_output_tokens=cap
            )
            await read_stream(stream)
            assert stream.start is not None
            assert stream.finish is not None
            usage, cost = stream.finish.usage, stream.finish.cost_nano_usd
            reserved = stream.start.reserved_nano_usd
        spent = await faregate.spent_nano_usd()
        held = await faregate.reserved_nano_usd()
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        page = await stub.ListSpend(admin_pb2.ListSpendRequest(budget_key="team"))

    assert cost < reserved, "the case's reservation must cover its cost"
    assert cost == spent == case.cost_nano_usd
    assert held == 0
    assert _counts(usage) == case.counts
    [entry] = page.entries
    assert _counts(entry.usage) == case.counts
    assert (entry.cost_nano_usd, entry.usage_flaw, entry.overrun_nano_usd) == (cost, "", 0)
    exported = io.StringIO()
    await export_spend(to_config(data), "", "", exported)
    [line] = [json.loads(text) for text in exported.getvalue().splitlines()]
    assert _counts(line) == case.counts
    assert line["cost_nano_usd"] == case.cost_nano_usd


async def test_a_stream_with_usage_in_every_chunk_is_charged_its_last_never_their_sum(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    case = CASES["usage-outside-completion-tokens"]
    config_data["models"]["gpt-fake"].update(context_window_tokens=200_000, max_output_tokens=8_000)
    chunks = [f" word{number}" for number in range(20)]
    upstream.queue(Script(usage_block=case.block, chunks=chunks, usage_in_every_chunk=True))

    async with start_faregate(to_config(config_data)) as faregate:
        stream = faregate.client.stream_route(
            PROMPT, budget_key="team", model="gpt-fake", max_output_tokens=7_000
        )
        await read_stream(stream)
        spent = await faregate.spent_nano_usd()

    assert stream.finish is not None
    assert _counts(stream.finish.usage) == case.counts
    assert stream.finish.cost_nano_usd == spent == case.cost_nano_usd


def _hand_priced(prompt: int, cached: int, completion: int) -> int:
    """gpt-fake's cost by hand: $2.50 uncached, $1.25 cached, $10 output per
    million tokens, the sum rounded up once to the nano-dollar."""
    scaled = (prompt - cached) * 2_500_000_000 + cached * 1_250_000_000
    scaled += completion * 10_000_000_000
    return -(-scaled // 1_000_000)


async def test_concurrent_requests_with_cached_input_keep_the_ledger_exact(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    admitted, total, cap = 37, 1000, 10
    counted = TiktokenCounter().count_messages([ChatMessage(Role.USER, PROMPT)])
    worst_case = _hand_priced(counted, 0, cap)
    config_data["budgets"]["race"] = {"limit_usd": str(Decimal(admitted * worst_case) / 10**9)}
    config_data["models"]["gpt-fake"].update(
        workers=16, queue=total, cached_input_usd_per_mtok=1.25
    )
    gate = asyncio.Event()
    # Each admitted call reports a different usage, part of its prompt cached,
    # all within the worst case.
    blocks = []
    for i in range(total):
        prompt, completion = counted - i % 3, i % (cap + 1)
        blocks.append(
            {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": i % (prompt + 1)},
            }
        )
    upstream.queue(*(Script(gate=gate, usage_block=block) for block in blocks))

    async with start_faregate(to_config(config_data)) as faregate:
        calls = [
            asyncio.create_task(
                faregate.client.route(
                    PROMPT, budget_key="race", model="gpt-fake", max_output_tokens=cap
                )
            )
            for _ in range(total)
        ]
        await eventually(
            lambda: sum(call.done() for call in calls) >= total - admitted, timeout_s=30
        )
        assert await faregate.reserved_nano_usd("race") == admitted * worst_case
        gate.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        spent = await faregate.spent_nano_usd("race")
        held = await faregate.reserved_nano_usd("race")
        records = [r for _, r in await faregate.running.state.spend("race", "", 1000, None)]

    served = [r for r in results if isinstance(r, router_pb2.RouteResponse)]
    rejected = [r for r in results if isinstance(r, FaregateError)]
    assert len(served) == admitted
    assert all(isinstance(e, BudgetExhausted) for e in rejected)
    reported = upstream.reported_blocks
    assert len(reported) == admitted
    by_hand = sum(
        _hand_priced(
            block["prompt_tokens"],
            block["prompt_tokens_details"]["cached_tokens"],
            block["completion_tokens"],
        )
        for block in reported
    )
    assert any(block["prompt_tokens_details"]["cached_tokens"] for block in reported)
    assert spent == by_hand
    assert sum(r.cost_nano_usd for r in served) == by_hand
    assert sum(record.cost_nano_usd for record in records) == by_hand
    assert sorted(record.cached_input_tokens for record in records) == sorted(
        block["prompt_tokens_details"]["cached_tokens"] for block in reported
    )
    assert held == 0


async def test_the_request_log_line_carries_the_parts_of_the_usage(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    case = CASES["anthropic-cache-read-5m-and-1h-writes"]
    upstream.queue(Script(usage_block=case.block))

    async with start_faregate(to_config(_priced(config_data, tmp_path))) as faregate:
        await faregate.client.route(
            PROMPT, budget_key="team", model=case.model, max_output_tokens=MAX_OUTPUT[case.model]
        )

        def line() -> dict[str, Any]:
            lines = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]
            assert lines, "no request line yet"
            parsed: dict[str, Any] = json.loads(lines[-1])
            return parsed

        logged = await eventually(line)

    assert _counts(logged) == case.counts
    assert logged["cost_nano_usd"] == case.cost_nano_usd


async def test_a_stream_cut_after_running_usage_snapshots_is_charged_the_last_one(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    # Gemini's compatible endpoint sends a running usage in every chunk, its
    # thinking only in the total; the connection drops after two of three.
    block = {"prompt_tokens": 758, "completion_tokens": 102, "total_tokens": 1_725}
    upstream.queue(
        Script(
            usage_block=block, chunks=["One", " two", " three"], usage_in_every_chunk=True,
            drop_after=2,
        )
    )  # fmt: skip

    async with start_faregate(to_config(_priced(config_data, tmp_path))) as faregate:
        stream = faregate.client.stream_route(
            PROMPT, budget_key="team", model="gpt-fake", max_output_tokens=2_000
        )
        with pytest.raises(StreamInterrupted):
            await read_stream(stream)
        spent = await faregate.spent_nano_usd()
        held = await faregate.reserved_nano_usd()

    # The second snapshot: the whole prompt, a total grown to 758 + 967 x 2/3
    # = 1,402, so 644 output tokens (thinking included), far more than the
    # two chunks delivered: 758 x 2,500 + 644 x 10,000.
    assert spent == 758 * 2_500 + 644 * 10_000
    assert held == 0
