"""Each model's reservation counts the prompt with its own tokenizer: o200k
for a gpt-4o, cl100k for a gpt-4, the estimate for a compatible server's
model, widened by its headroom."""

from __future__ import annotations

from typing import Any

from tests.conftest import StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream

CHAT = [("system", "Be brief."), ("user", "Привет, как дела?")]
"""3 + (3 + 1 + 3) + (3 + 1 + 6) = 20 o200k tokens, 22 cl100k ones (its user
turn is 8), 4 + 3 + 4 + 10 = 21 by the estimate (9 and 30 UTF-8 bytes), 28
at headroom 0.5 (5 and 15)."""
MAX_OUTPUT_TOKENS = 50
GPT_INPUT_NANO_PER_TOKEN = 2_500  # gpt-fake's prices, 2.50 and 10 USD per 1M tokens
GPT_OUTPUT_NANO_PER_TOKEN = 10_000
CLAUDE_INPUT_NANO_PER_TOKEN = 3_000  # claude-fake's, 3 and 15
CLAUDE_OUTPUT_NANO_PER_TOKEN = 15_000


def _gpt_worst_case(input_tokens: int) -> int:
    return input_tokens * GPT_INPUT_NANO_PER_TOKEN + MAX_OUTPUT_TOKENS * GPT_OUTPUT_NANO_PER_TOKEN


def _models(config_data: dict[str, Any]) -> dict[str, Any]:
    gpt = dict(config_data["models"]["gpt-fake"])
    del gpt["tokenizer"]  # each model below takes the tokenizer its id implies
    claude = config_data["models"]["claude-fake"]
    return {
        "gpt-4o": gpt,
        "gpt-4": gpt,
        "llama": {**gpt, "upstream_model": "llama3.1:8b"},
        "claude-wide": {**claude, "estimate_headroom": 0.5},
    }


async def test_each_models_reservation_uses_its_own_tokenizers_count(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["models"].update(_models(config_data))
    async with start_faregate(to_config(config_data)) as faregate:
        reserved = {
            model: (
                await faregate.client.route(
                    CHAT, budget_key="team", model=model, max_output_tokens=MAX_OUTPUT_TOKENS
                )
            ).reserved_nano_usd
            for model in ("gpt-4o", "gpt-4", "llama", "claude-wide")
        }
        assert await faregate.reserved_nano_usd() == 0

    assert reserved == {
        "gpt-4o": _gpt_worst_case(20),
        "gpt-4": _gpt_worst_case(22),
        "llama": _gpt_worst_case(21),
        "claude-wide": 28 * CLAUDE_INPUT_NANO_PER_TOKEN
        + MAX_OUTPUT_TOKENS * CLAUDE_OUTPUT_NANO_PER_TOKEN,
    }
    assert [request.body["model"] for request in upstream.received[:3]] == [
        "gpt-4o",
        "gpt-4",
        "llama3.1:8b",
    ]


async def test_explain_shows_each_candidates_worst_case_from_its_own_count(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    config_data["models"].update(_models(config_data))
    config_data["routes"]["openai"] = ["gpt-4o", "gpt-4", "llama"]
    async with start_faregate(to_config(config_data)) as faregate:
        reply = await faregate.client.route(
            CHAT,
            budget_key="team",
            model="openai",
            max_output_tokens=MAX_OUTPUT_TOKENS,
            explain=True,
        )

    worst_cases = {candidate.model: candidate.worst_case_nano_usd for candidate in reply.candidates}
    assert worst_cases == {
        "gpt-4o": _gpt_worst_case(20),
        "gpt-4": _gpt_worst_case(22),
        "llama": _gpt_worst_case(21),
    }
    assert reply.reserved_nano_usd == worst_cases[reply.model_used]
