"""What a provider or a model refuses, judged per candidate before any work:
a temperature over 1 (or any but 1 while reasoning) passes an Anthropic
candidate over for the OpenAI one that takes it, as does a setting a
model's config `refuses`; `explain` says why, and an explicit model refuses
it naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2
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


async def test_reasoning_with_a_temperature_skips_anthropic_which_refuses_the_pair(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    thinking = router_pb2.Reasoning(effort=router_pb2.REASONING_EFFORT_LOW)
    answer = await faregate.client.route(
        "hi", budget_key="team", temperature=0.3, reasoning=thinking, prefer="quality", explain=True
    )

    assert answer.model_used == "gpt-fake"
    reasons = {candidate.model: candidate.reason for candidate in answer.candidates}
    assert (
        reasons["claude-fake"] == "temperature: must be 1 (or unset) when Anthropic models reason"
    )
    assert len(upstream.received) == 1


@pytest.fixture
async def refusing(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    """gpt-fake configured as a reasoning model (no temperature, no top_p) and
    claude-fake as a newer Claude (either of them, not both), each first
    choice on a route of its own with a model taking it all behind it."""
    config_data["models"]["gpt-fake"]["refuses"] = ["temperature", "top_p"]
    config_data["models"]["claude-fake"]["refuses"] = ["temperature_with_top_p"]
    config_data["routes"] = {
        "default": ["gpt-fake", "claude-fake"],
        "claude": ["claude-fake", "cheap-fake"],
    }
    config_data["models"]["gpt-fake"]["quality"] = 0.99
    config_data["models"]["claude-fake"]["quality"] = 0.99
    async with start_faregate(to_config(config_data)) as running:
        yield running


async def test_a_setting_the_model_refuses_sends_the_request_to_the_next_candidate(
    refusing: Faregate,
) -> None:
    plain = await refusing.client.route("hi", budget_key="team", model="default")
    tempered = await refusing.client.route(
        "hi", budget_key="team", model="default", temperature=0.2, explain=True
    )

    assert plain.model_used == "gpt-fake"
    assert tempered.model_used == "claude-fake"
    reasons = {candidate.model: candidate.reason for candidate in tempered.candidates}
    assert reasons["gpt-fake"] == "temperature: the model refuses it (`refuses` in its config)"


async def test_temperature_with_top_p_refuses_only_the_pair(refusing: Faregate) -> None:
    one = await refusing.client.route(
        "hi", budget_key="team", model="claude", temperature=0.2, prefer="quality"
    )
    both = await refusing.client.route(
        "hi", budget_key="team", model="claude", temperature=0.2, top_p=0.9, explain=True
    )

    assert one.model_used == "claude-fake"
    assert both.model_used == "cheap-fake"
    reasons = {candidate.model: candidate.reason for candidate in both.candidates}
    assert reasons["claude-fake"] == "top_p: the model takes temperature or top_p, not both"


async def test_an_explicit_model_refusing_a_setting_names_the_field(
    refusing: Faregate, upstream: FakeUpstream
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await refusing.client.route("hi", budget_key="team", model="gpt-fake", top_p=0.5)

    assert refused.value.reason == "MODEL_CANNOT_SERVE"
    assert refused.value.field_violations == {
        "top_p": "the model refuses it (`refuses` in its config)"
    }
    assert upstream.received == []
    assert await refusing.reserved_nano_usd() == 0
