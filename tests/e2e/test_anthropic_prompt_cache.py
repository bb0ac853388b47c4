"""Prompt caching through the real server to a fake Anthropic upstream: a
request's `cache_prompt` reaches the wire as `cache_control` marks on the
tools, the system prompt and the conversation; a route's `cache_prompt`
applies to requests that say nothing; a request's false overrides the
route's true; and the explained worst case prices the input as a cache
write when caching is on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from faregate.v1 import router_pb2

from tests.conftest import Faregate, StartFaregate, base_config, to_config
from tests.fakes.anthropic_upstream import FakeAnthropic

TOOL = router_pb2.Tool(name="read_file", description="Read a file", parameters_json="{}")
MARK = {"type": "ephemeral"}
HOUR_MARK = {"type": "ephemeral", "ttl": "1h"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def faregate(start_faregate: StartFaregate, fake: FakeAnthropic) -> AsyncIterator[Faregate]:
    data = base_config(fake.base_url)
    data["models"]["claude-fake"]["capabilities"] = ["tools"]
    data["routes"] = {
        "default": ["claude-fake"],
        "cached": {"candidates": ["claude-fake"], "cache_prompt": True, "cache_ttl": "1h"},
    }
    async with start_faregate(to_config(data)) as running:
        yield running


def _conversation() -> list[router_pb2.Message]:
    return [
        router_pb2.Message(role=router_pb2.ROLE_SYSTEM, content="You are a coding agent."),
        router_pb2.Message(role=router_pb2.ROLE_USER, content="open main.py"),
        router_pb2.Message(role=router_pb2.ROLE_ASSISTANT, content="Opening it."),
        router_pb2.Message(role=router_pb2.ROLE_USER, content="and now?"),
    ]


def _marks(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """The marks of a body, by where they are."""
    marks = [("tools", tool["cache_control"]) for tool in body.get("tools", [])
             if "cache_control" in tool]  # fmt: skip
    system = body.get("system")
    if isinstance(system, list):
        marks += [
            ("system", block["cache_control"]) for block in system if "cache_control" in block
        ]
    for number, message in enumerate(body["messages"]):
        content = message["content"]
        if isinstance(content, list):
            marks += [
                (f"messages[{number}]", block["cache_control"])
                for block in content
                if "cache_control" in block
            ]
    return marks


async def test_a_requests_cache_prompt_reaches_the_wire_as_marks(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    answer = await faregate.client.route(
        _conversation(), budget_key="team", tools=[TOOL], cache_prompt=True
    )

    assert answer.output == "Hello"
    (body,) = fake.received
    assert _marks(body) == [
        ("tools", MARK),
        ("system", MARK),
        ("messages[0]", MARK),
        ("messages[2]", MARK),
    ]
    assert body["system"] == [
        {"type": "text", "text": "You are a coding agent.", "cache_control": MARK}
    ]


async def test_a_stream_is_marked_as_a_whole_answer_is(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    chunks = [
        chunk
        async for chunk in faregate.client.stream_route(
            _conversation(), budget_key="team", cache_prompt=True
        )
    ]

    assert chunks
    (body,) = fake.received
    assert body["stream"] is True
    assert [place for place, _ in _marks(body)] == ["system", "messages[0]", "messages[2]"]


async def test_the_routes_setting_applies_when_the_request_says_nothing(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    await faregate.client.route(_conversation(), model="cached", budget_key="team")
    await faregate.client.route(_conversation(), budget_key="team")

    cached, plain = fake.received
    assert _marks(cached) == [
        ("system", HOUR_MARK),
        ("messages[0]", HOUR_MARK),
        ("messages[2]", HOUR_MARK),
    ]
    assert _marks(plain) == []
    assert plain["system"] == "You are a coding agent."
    assert plain["messages"][2]["content"] == "and now?"


async def test_a_requests_false_overrides_the_routes_true(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    await faregate.client.route(
        _conversation(), model="cached", budget_key="team", cache_prompt=False
    )

    (body,) = fake.received
    assert _marks(body) == []
    assert body["system"] == "You are a coding agent."


async def test_the_explained_worst_case_prices_the_input_as_an_hours_write(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    plain = await faregate.client.route(
        _conversation(), model="cached", budget_key="team", cache_prompt=False, explain=True
    )
    cached = await faregate.client.route(
        _conversation(), model="cached", budget_key="team", explain=True
    )

    (plain_score,) = plain.candidates
    (cached_score,) = cached.candidates
    # The same counted input and output cap (100): input at $3, or at the
    # hour's write, $6 (an anthropic model's default: twice the input).
    output_nano_usd = 100 * 15_000
    plain_input = plain_score.worst_case_nano_usd - output_nano_usd
    assert plain_input > 0
    assert cached_score.worst_case_nano_usd == 2 * plain_input + output_nano_usd
