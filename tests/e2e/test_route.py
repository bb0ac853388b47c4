"""Route and StreamRoute end to end: typed client -> faregate -> fake upstream."""

from __future__ import annotations

import pytest
from faregate.v1 import router_pb2
from faregate_server.domain import ChatMessage, Role
from faregate_server.upstream.tokens import TiktokenCounter

from tests.conftest import Faregate
from tests.fakes.upstream import FakeUpstream, Script

GPT_INPUT_NANO_PER_TOKEN = 2_500  # 2.50 USD per 1M tokens
GPT_OUTPUT_NANO_PER_TOKEN = 10_000
CLAUDE_INPUT_NANO_PER_TOKEN = 3_000
CLAUDE_OUTPUT_NANO_PER_TOKEN = 15_000


async def test_route_returns_the_completion_with_exact_accounting(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["Hi", " there"], usage=(21, 2))

    reply = await faregate.client.route(
        [("system", "Be brief."), ("user", "Say hi")],
        budget_key="team",
        model="gpt-fake",
        max_output_tokens=50,
        temperature=0.2,
        request_id="",  # no client id: the check below is on the id faregate makes
    )

    assert reply.output == "Hi there"
    assert reply.finish_reason == router_pb2.FINISH_REASON_STOP
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (21, 2)
    assert reply.cost_nano_usd == 21 * GPT_INPUT_NANO_PER_TOKEN + 2 * GPT_OUTPUT_NANO_PER_TOKEN
    assert reply.model_used == "gpt-fake"
    assert reply.provider == "openai"
    assert len(reply.request_id) == 32
    counted = TiktokenCounter().count_messages(
        [ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, "Say hi")]
    )
    assert reply.reserved_nano_usd == (
        counted * GPT_INPUT_NANO_PER_TOKEN + 50 * GPT_OUTPUT_NANO_PER_TOKEN
    )
    assert reply.budget_remaining_nano_usd == 100 * 10**9 - reply.cost_nano_usd
    assert await faregate.spent_nano_usd() == reply.cost_nano_usd
    assert await faregate.reserved_nano_usd() == 0
    sent = upstream.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer sk-test-openai"
    assert sent.body["model"] == "gpt-fake"
    assert sent.body["max_tokens"] == 50
    assert sent.body["temperature"] == 0.2
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]


async def test_stream_route_relays_each_chunk_between_start_and_finish(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["one", " two", " three"], usage=(9, 3))

    stream = faregate.client.stream_route("count", budget_key="team", model="gpt-fake")
    texts = [text async for text in stream]

    assert texts == ["one", " two", " three"]
    assert stream.start is not None
    assert stream.finish is not None
    assert stream.start.model_used == "gpt-fake"
    assert stream.start.provider == "openai"
    assert stream.start.reserved_nano_usd > 0
    assert (
        stream.finish.cost_nano_usd == 9 * GPT_INPUT_NANO_PER_TOKEN + 3 * GPT_OUTPUT_NANO_PER_TOKEN
    )
    assert stream.finish.finish_reason == router_pb2.FINISH_REASON_STOP
    assert stream.finish.budget_remaining_nano_usd == 100 * 10**9 - stream.finish.cost_nano_usd
    sent = upstream.received[0].body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 100  # the model's cap, as the request set none
    assert await faregate.reserved_nano_usd() == 0


async def test_anthropic_route_and_stream_speak_the_messages_api(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["Bon", "jour"], usage=(14, 2), finish_reason="length")
    messages = [("system", "Speak French."), ("user", "Hello")]

    reply = await faregate.client.route(messages, budget_key="team", model="claude-fake")
    stream = faregate.client.stream_route(messages, budget_key="team", model="claude-fake")
    texts = [text async for text in stream]

    expected_cost = 14 * CLAUDE_INPUT_NANO_PER_TOKEN + 2 * CLAUDE_OUTPUT_NANO_PER_TOKEN
    assert reply.output == "Bonjour"
    assert reply.provider == "anthropic"
    assert reply.finish_reason == router_pb2.FINISH_REASON_LENGTH
    assert reply.cost_nano_usd == expected_cost
    assert texts == ["Bon", "jour"]
    assert stream.finish is not None
    assert stream.finish.cost_nano_usd == expected_cost
    assert stream.finish.finish_reason == router_pb2.FINISH_REASON_LENGTH
    for received in upstream.received:
        assert received.path == "/v1/messages"
        assert received.headers["x-api-key"] == "sk-ant-test"
        assert received.headers["anthropic-version"] == "2023-06-01"
        assert received.body["system"] == "Speak French."
        assert received.body["messages"] == [{"role": "user", "content": "Hello"}]
        assert received.body["max_tokens"] == 100
    assert await faregate.spent_nano_usd() == 2 * expected_cost
    assert await faregate.reserved_nano_usd() == 0


async def test_empty_model_uses_the_default_route(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    reply = await faregate.client.route("hi", budget_key="team")

    assert reply.model_used == "gpt-fake"


@pytest.mark.parametrize("model", ["gpt-fake", "claude-fake"])
async def test_stream_without_reported_usage_is_charged_for_what_was_delivered(
    faregate: Faregate, upstream: FakeUpstream, model: str
) -> None:
    upstream.default = Script(chunks=["alpha", " beta", " gamma"], usage=None)

    stream = faregate.client.stream_route("go", budget_key="team", model=model)
    texts = [text async for text in stream]

    assert texts == ["alpha", " beta", " gamma"]
    assert stream.finish is not None
    assert stream.finish.usage.output_tokens >= 3
    assert stream.finish.usage.input_tokens > 0
    assert stream.finish.cost_nano_usd > 0
    assert await faregate.spent_nano_usd() == stream.finish.cost_nano_usd
    assert await faregate.reserved_nano_usd() == 0
