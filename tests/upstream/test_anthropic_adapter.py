"""The Anthropic adapter against a fake Messages upstream speaking the
documented wire format: tool calls, thinking with signatures, refusals and
cut-off calls, whole and streamed (with and without the fragments beyond
text), and a tool loop passed back as the API requires."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from faregate_server.content import (
    AnswerDelta,
    Feature,
    GenerationOptions,
    MessageExtras,
    Reasoning,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
)
from faregate_server.domain import (
    ChatMessage,
    Completion,
    FinishReason,
    Role,
    StreamEnd,
    UpstreamRequest,
    Usage,
)
from faregate_server.upstream.providers import UpstreamError, UpstreamErrorKind
from faregate_server.upstream.providers.anthropic import AnthropicProvider
from faregate_server.upstream.redaction import Redactor

from tests.conftest import base_config, to_config
from tests.fakes.anthropic_upstream import AnthropicScript, FakeAnthropic

WEATHER = Tool("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}})
THINKING = {"type": "thinking", "thinking": "The user wants weather.", "signature": "c2lnLWE="}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
TEXT = {"type": "text", "text": "I'll check."}
PARIS = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
ROME = {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Rome"}}
NO_ARGS = {"type": "tool_use", "id": "toolu_03", "name": "get_weather", "input": {}}
PARIS_CALL = ToolCall("toolu_01", "get_weather", '{"city":"Paris"}')
REFUSED = {"type": "refusal", "category": "cyber", "explanation": "Refused due to policy."}


def _request(*messages: ChatMessage, **options: Any) -> UpstreamRequest:
    return UpstreamRequest(
        upstream_model="m",
        messages=messages or (ChatMessage(Role.USER, "weather in Paris?"),),
        max_output_tokens=4096,
        temperature=None,
        options=GenerationOptions(tools=(WEATHER,), **options),
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    data = copy.deepcopy(base_config(fake.base_url))
    data["models"]["claude-fake"]["max_output_tokens"] = 8192
    data["models"]["claude-fake"]["context_window_tokens"] = 32768
    config = to_config(data)
    async with aiohttp.ClientSession() as session:
        yield AnthropicProvider(session, config.models["claude-fake"], Redactor())


async def _deltas(
    provider: AnthropicProvider, request: UpstreamRequest
) -> tuple[list[str | AnswerDelta], StreamEnd]:
    items: list[str | AnswerDelta] = []
    async for item in provider.stream(request):
        if isinstance(item, StreamEnd):
            return items, item
        items.append(item)
    raise AssertionError("no StreamEnd")


def test_the_adapter_carries_everything_but_a_seed() -> None:
    assert frozenset(Feature) - AnthropicProvider.carried_features == {Feature.SEED}


async def test_a_whole_answer_with_thinking_text_and_a_tool_call(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([THINKING, REDACTED, TEXT, PARIS], "tool_use", usage=(377, 65)))
    completion = await provider.complete(_request(reasoning=Reasoning(budget_tokens=2048)))
    assert completion == Completion(
        text="I'll check.",
        finish_reason=FinishReason.TOOL_CALLS,
        usage=Usage(377, 65),
        tool_calls=(PARIS_CALL,),
        reasoning=(
            ReasoningBlock(text="The user wants weather.", signature="c2lnLWE="),
            ReasoningBlock(redacted=b"EmwKAhgBEgy3va3pzix"),
        ),
    )
    assert fake.received[0]["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert fake.received[0]["tools"][0]["input_schema"] == dict(WEATHER.parameters)


async def test_a_whole_answer_with_two_tool_calls_keeps_their_order(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([PARIS, ROME, NO_ARGS], "tool_use"))
    completion = await provider.complete(_request())
    assert [(call.id, call.arguments_json) for call in completion.tool_calls] == [
        ("toolu_01", '{"city":"Paris"}'),
        ("toolu_02", '{"city":"Rome"}'),
        ("toolu_03", "{}"),
    ]


async def test_a_whole_refusal_carries_its_explanation(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([], "refusal", stop_details=REFUSED))
    completion = await provider.complete(_request())
    assert completion.finish_reason is FinishReason.REFUSAL
    assert completion.refusal == "Refused due to policy."
    fake.queue(AnthropicScript([], "refusal", stop_details={**REFUSED, "explanation": None}))
    assert (await provider.complete(_request())).refusal == "cyber"


async def test_a_whole_answer_cut_at_max_tokens_presents_no_last_call(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([PARIS, ROME], "max_tokens"))
    completion = await provider.complete(_request())
    assert completion.finish_reason is FinishReason.LENGTH
    assert completion.tool_calls == (PARIS_CALL,)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("pause_turn", FinishReason.PAUSE_TURN),
        ("model_context_window_exceeded", FinishReason.CONTEXT_WINDOW_EXCEEDED),
        ("something_new", FinishReason.UNSPECIFIED),
    ],
)
async def test_stop_reasons_map_per_the_contract(
    fake: FakeAnthropic, provider: AnthropicProvider, stop_reason: str, finish_reason: FinishReason
) -> None:
    fake.queue(AnthropicScript([TEXT], stop_reason), AnthropicScript([TEXT], stop_reason))
    assert (await provider.complete(_request())).finish_reason is finish_reason
    _, end = await _deltas(provider, _request())
    assert end.finish_reason is finish_reason


async def test_a_stream_relays_text_then_tool_call_fragments_indexed_by_call(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([TEXT, PARIS, ROME], "tool_use", fragment_chars=5))
    items, end = await _deltas(provider, _request())
    assert items[0] == "I'll check."
    starts = [item for item in items if isinstance(item, ToolCallDelta) and item.id]
    assert starts == [
        ToolCallDelta(0, id="toolu_01", name="get_weather"),
        ToolCallDelta(1, id="toolu_02", name="get_weather"),
    ]
    for index, expected in enumerate(('{"city": "Paris"}', '{"city": "Rome"}')):
        fragments = [
            item.arguments_json
            for item in items
            if isinstance(item, ToolCallDelta) and item.index == index and not item.id
        ]
        assert len(fragments) > 1
        assert all(fragments)  # the leading "" is not relayed
        assert "".join(fragments) == expected
    assert end.finish_reason is FinishReason.TOOL_CALLS
    assert end.usage == Usage(11, 3)
    assert end.tool_calls == (
        ToolCall("toolu_01", "get_weather", '{"city": "Paris"}'),
        ToolCall("toolu_02", "get_weather", '{"city": "Rome"}'),
    )


async def test_a_streamed_call_with_no_arguments_is_assembled_as_an_empty_object(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([NO_ARGS], "tool_use"))
    _, end = await _deltas(provider, _request())
    assert end.tool_calls == (ToolCall("toolu_03", "get_weather", "{}"),)


async def test_streamed_thinking_relays_its_text_and_ends_with_signed_blocks(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([THINKING, REDACTED, TEXT], "end_turn"))
    items, end = await _deltas(provider, _request(reasoning=Reasoning(budget_tokens=2048)))
    reasoning = [item for item in items if isinstance(item, ReasoningDelta)]
    assert len(reasoning) == 2
    assert "".join(item.text for item in reasoning) == "The user wants weather."
    assert items[-1] == "I'll check."
    assert end.reasoning == (
        ReasoningBlock(text="The user wants weather.", signature="c2lnLWE="),
        ReasoningBlock(redacted=b"EmwKAhgBEgy3va3pzix"),
    )


async def test_a_streamed_refusal_after_text_ends_as_a_refusal(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([{"type": "text", "text": "Hi"}], "refusal", stop_details=REFUSED))
    items, end = await _deltas(provider, _request())
    assert items == ["Hi", RefusalDelta("Refused due to policy.")]
    assert end.finish_reason is FinishReason.REFUSAL


async def test_a_call_cut_off_at_max_tokens_streams_fragments_but_is_not_assembled(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([PARIS, ROME], "max_tokens", cut_last_block=True))
    items, end = await _deltas(provider, _request())
    assert ToolCallDelta(1, id="toolu_02", name="get_weather") in items
    assert end.finish_reason is FinishReason.LENGTH
    assert end.tool_calls == (ToolCall("toolu_01", "get_weather", '{"city": "Paris"}'),)


async def test_a_tool_loop_with_thinking_passes_the_turn_back_as_the_api_requires(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([THINKING, PARIS], "tool_use"))
    reasoning = Reasoning(budget_tokens=2048)
    question = ChatMessage(Role.USER, "weather in Paris?")
    first = await provider.complete(_request(question, reasoning=reasoning))
    turn = ChatMessage(
        Role.ASSISTANT,
        first.text,
        MessageExtras(tool_calls=first.tool_calls, reasoning=first.reasoning),
    )
    result = ChatMessage(Role.TOOL, "14C, rain", MessageExtras(tool_call_id="toolu_01"))
    second = await provider.complete(_request(question, turn, result, reasoning=reasoning))
    assert second.text == "Hello"  # the fake found nothing to refuse
    sent = fake.received[1]["messages"]
    assert sent[1]["content"] == [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "c2lnLWE="},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "14C, rain"}],
    }


async def test_what_thinking_cannot_take_is_rejected_before_any_call(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    request = _request(
        reasoning=Reasoning(budget_tokens=2048), tool_choice=ToolChoice(ToolChoiceMode.REQUIRED)
    )
    with pytest.raises(UpstreamError) as whole:
        await provider.complete(request)
    assert whole.value.kind is UpstreamErrorKind.REJECTED
    assert whole.value.message.startswith("tool_choice: ")
    with pytest.raises(UpstreamError) as streamed:
        await anext(provider.stream(request))
    assert streamed.value.kind is UpstreamErrorKind.REJECTED
    assert fake.received == []


CACHED_USAGE = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 30000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
    "output_tokens": 12,
    "service_tier": "standard",
}


async def test_a_whole_answer_counts_cache_reads_and_writes_as_input(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.queue(AnthropicScript([TEXT], usage_block=CACHED_USAGE))
    completion = await provider.complete(_request())
    assert completion.usage == Usage(32010, 12, 30000, 2000, 500)


async def test_a_stream_takes_message_deltas_cumulative_usage_over_message_starts(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    # message_delta repeats the input and cache counts: replaced, never added.
    fake.queue(AnthropicScript([TEXT], usage_block=CACHED_USAGE))
    _, end = await _deltas(provider, _request())
    assert end.usage == Usage(32010, 12, 30000, 2000, 500)


async def test_a_stream_whose_message_delta_has_only_output_keeps_the_input_side(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    # Null counts in message_delta are counts not sent (the SDK's type is optional).
    delta_usage = {"output_tokens": 40, "input_tokens": None, "cache_read_input_tokens": None}
    fake.queue(AnthropicScript([TEXT], usage_block=CACHED_USAGE, delta_usage=delta_usage))
    _, end = await _deltas(provider, _request())
    assert end.usage == Usage(32010, 40, 30000, 2000, 500)
