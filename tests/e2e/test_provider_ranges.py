"""A provider's parameter ranges, judged per candidate before any work: a
temperature over 1 passes an Anthropic candidate over for the OpenAI one
that takes it, `explain` says why, and an explicit Anthropic model refuses
it naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from faregate_client import InvalidArgument

from tests.conftest import Faregate, StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream


@pytest.fixture
async def faregate(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    config_data["routes"] = {"default": ["claude-fake", "gpt-fake"]}
    # With prefer=quality, the first choice whenever it can serve.
    config_data["models"]["claude-fake"]["quality"] = 0.99
    async with start_faregate(to_config(config_data)) as running:
        yield running


async def test_a_temperature_over_anthropics_range_goes_to_the_openai_candidate(
    faregate: Faregate,
) -> None:
    within = await faregate.client.route("hi", budget_key="team", temperature=0.7, prefer="quality")
    over = await faregate.client.route(
        "hi", budget_key="team", temperature=1.5, prefer="quality", explain=True
    )

    assert within.model_used == "claude-fake"
    assert over.model_used == "gpt-fake"
    reasons = {candidate.model: candidate.reason for candidate in over.candidates}
    assert reasons["claude-fake"] == "temperature: must be at most 1 for anthropic models"
    assert reasons["gpt-fake"] == ""


async def test_an_explicit_anthropic_model_refuses_it_naming_the_field(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await faregate.client.route("hi", budget_key="team", model="claude-fake", temperature=1.5)

    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.reason == "MODEL_CANNOT_SERVE"
    assert refused.value.field_violations == {
        "temperature": "must be at most 1 for anthropic models"
    }
    assert upstream.received == []
    assert await faregate.reserved_nano_usd() == 0
