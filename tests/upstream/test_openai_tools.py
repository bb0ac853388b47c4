"""The openai adapter's agent-loop fields against the fake upstream: what it
sends (tools, tool turns, images, response formats, sampling, the output cap
field) and what it reads back (tool calls whole and as stream fragments,
refusals, reasoning), including compatible servers' variants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from faregate_server.config.schema import Config
from faregate_server.content import (
    NO_PARAMETERS,
    AnswerDelta,
    GenerationOptions,
    Image,
    MessageExtras,
    Reasoning,
    ReasoningBlock,
    ReasoningDelta,
    ReasoningEffort,
    RefusalDelta,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolChoiceMode,
)
from faregate_server.domain import ChatMessage, FinishReason, Role, StreamEnd, UpstreamRequest
from faregate_server.upstream.providers import UpstreamError, UpstreamErrorKind, build_provider
from faregate_server.upstream.providers.base import Provider
from faregate_server.upstream.redaction import Redactor

from tests.conftest import to_config
from tests.fakes.upstream import FakeUpstream, Script, openai_tool_call_deltas

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = (Tool("get_weather", "Current weather", WEATHER), Tool("now", "", NO_PARAMETERS))
CALLS = [
    {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Edinburgh \\"Auld\\""}'},
    {"id": "call_b", "name": "now", "arguments": "{}"},
]
ASSEMBLED = (
    ToolCall("call_a", "get_weather", '{"city": "Edinburgh \\"Auld\\""}'),
    ToolCall("call_b", "now", "{}"),
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def config(config_data: dict[str, Any]) -> Config:
    return to_config(config_data)


def _provider(config: Config, session: aiohttp.ClientSession, model: str = "gpt-fake") -> Provider:
    return build_provider(config.models[model], session, Redactor())


def _request(
    options: GenerationOptions | None = None,
    messages: tuple[ChatMessage, ...] = (ChatMessage(Role.USER, "weather?"),),
) -> UpstreamRequest:
    return UpstreamRequest("m", messages, 64, None, options)


async def _collect(
    provider: Provider, request: UpstreamRequest
) -> tuple[list[str | AnswerDelta], StreamEnd]:
    items: list[str | AnswerDelta] = []
    end = None
    async for item in provider.stream(request):
        if isinstance(item, StreamEnd):
            end = item
        else:
            items.append(item)
    assert end is not None
    return items, end


async def test_the_request_carries_every_agent_field_on_the_documented_wire(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    image_bytes = b"\x89PNG\r\n"
    messages = (
        ChatMessage(Role.SYSTEM, "Be brief."),
        ChatMessage(
            Role.USER,
            "",
            MessageExtras(
                parts=(
                    "What is this?",
                    Image(url="https://example.com/a.png"),
                    Image(data=image_bytes, media_type="image/png"),
                )
            ),
        ),
        ChatMessage(Role.ASSISTANT, "", MessageExtras(tool_calls=ASSEMBLED)),
        ChatMessage(Role.TOOL, "14°C, rain", MessageExtras(tool_call_id="call_a")),
        ChatMessage(Role.TOOL, "12:00", MessageExtras(tool_call_id="call_b")),
    )
    options = GenerationOptions(
        tools=TOOLS,
        tool_choice=ToolChoice(ToolChoiceMode.TOOL, "get_weather"),
        parallel_tool_calls=False,
        response_format=ResponseFormat({"type": "object"}, "weather", strict=True),
        stop=("END", "\n\n"),
        top_p=0.9,
        seed=42,
        reasoning=Reasoning(ReasoningEffort.LOW),
    )
    await _provider(config, session).complete(_request(options, messages))

    body = upstream.received[0].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ASSEMBLED[0].arguments_json},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "now", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "14°C, rain"},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": WEATHER,
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": dict(NO_PARAMETERS)}},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": True},
    }
    assert (body["stop"], body["top_p"], body["seed"]) == (["END", "\n\n"], 0.9, 42)
    assert body["reasoning_effort"] == "low"
    assert body["max_tokens"] == 64  # gpt-fake's output_cap_field


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (ToolChoice(ToolChoiceMode.AUTO), "auto"),
        (ToolChoice(ToolChoiceMode.NONE), "none"),
        (ToolChoice(ToolChoiceMode.REQUIRED), "required"),
    ],
)
async def test_tool_choice_modes_and_json_object(
    upstream: FakeUpstream,
    config: Config,
    session: aiohttp.ClientSession,
    choice: ToolChoice,
    wire: str,
) -> None:
    options = GenerationOptions(tools=TOOLS, tool_choice=choice, response_format=ResponseFormat())
    await _provider(config, session).complete(_request(options))
    body = upstream.received[0].body
    assert body["tool_choice"] == wire
    assert body["response_format"] == {"type": "json_object"}
    assert "parallel_tool_calls" not in body


async def test_parallel_tool_calls_is_sent_only_with_tools(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    await _provider(config, session).complete(_request(GenerationOptions(parallel_tool_calls=True)))
    assert "parallel_tool_calls" not in upstream.received[0].body


async def test_the_output_cap_goes_in_the_models_field(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    await _provider(config, session, "cheap-fake").complete(_request())
    await _provider(config, session, "gpt-fake").complete(_request())
    cheap, gpt = (received.body for received in upstream.received)
    assert (cheap["max_completion_tokens"], "max_tokens" in cheap) == (64, False)
    assert (gpt["max_tokens"], "max_completion_tokens" in gpt) == (64, False)


async def test_a_reasoning_budget_alone_is_refused_rather_than_dropped(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    options = GenerationOptions(reasoning=Reasoning(budget_tokens=32))
    with pytest.raises(UpstreamError) as failed:
        await _provider(config, session).complete(_request(options))
    assert failed.value.kind is UpstreamErrorKind.REJECTED
    assert upstream.received == []


@pytest.mark.parametrize("finish_reason", ["tool_calls", "stop"])
async def test_a_whole_answer_with_two_parallel_calls_finishes_tool_calls(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession, finish_reason: str
) -> None:
    upstream.default = Script(chunks=[], tool_calls=CALLS, finish_reason=finish_reason)
    completion = await _provider(config, session).complete(_request(GenerationOptions(tools=TOOLS)))
    assert completion.text == ""
    assert completion.tool_calls == ASSEMBLED
    assert completion.finish_reason is FinishReason.TOOL_CALLS


async def test_a_whole_answer_cut_short_in_a_call_is_length(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    cut = [{"id": "call_a", "name": "get_weather", "arguments": '{"ci'}]
    upstream.default = Script(chunks=[], tool_calls=cut, finish_reason="length")
    completion = await _provider(config, session).complete(_request(GenerationOptions(tools=TOOLS)))
    assert completion.tool_calls == (ToolCall("call_a", "get_weather", '{"ci'),)
    assert completion.finish_reason is FinishReason.LENGTH


async def test_a_whole_answer_reads_refusal_and_reasoning_content(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    upstream.queue(
        Script(refusal="I can't help with that."),
        Script(chunks=["42"], reasoning_content="Six times seven."),
    )
    provider = _provider(config, session)
    refused = await provider.complete(_request())
    reasoned = await provider.complete(_request())
    assert (refused.text, refused.refusal) == ("", "I can't help with that.")
    assert refused.finish_reason is FinishReason.REFUSAL
    assert reasoned.text == "42"
    assert reasoned.reasoning == (ReasoningBlock(text="Six times seven."),)


@pytest.mark.parametrize("interleave", [False, True], ids=["one-after-the-other", "interleaved"])
async def test_streamed_fragments_of_two_calls_are_relayed_and_assembled_by_index(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession, interleave: bool
) -> None:
    deltas = openai_tool_call_deltas(CALLS, 3, interleave=interleave)
    upstream.default = Script(
        chunks=["Checking"], stream_deltas=deltas, finish_reason="tool_calls", usage=(20, 9)
    )
    items, end = await _collect(
        _provider(config, session), _request(GenerationOptions(tools=TOOLS))
    )

    assert items[0] == "Checking"
    fragments = [item for item in items[1:] if isinstance(item, ToolCallDelta)]
    assert len(fragments) == len(items) - 1
    firsts = [(f.index, f.id, f.name) for f in fragments if f.id]
    assert firsts == [(0, "call_a", "get_weather"), (1, "call_b", "now")]
    for number, call in enumerate(ASSEMBLED):
        assert "".join(f.arguments_json for f in fragments if f.index == number) == (
            call.arguments_json
        )
    assert end.tool_calls == ASSEMBLED
    assert end.finish_reason is FinishReason.TOOL_CALLS


async def test_text_and_tool_call_fragments_may_share_chunks_and_alternate(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    first, *rest = openai_tool_call_deltas(CALLS[:1], 5)
    deltas = [
        {"content": "Let me ", **first},
        {"content": "look."},
        *rest,
    ]
    # finish_reason "stop" with calls, as OpenAI sends when tool_choice names one.
    upstream.default = Script(chunks=[], stream_deltas=deltas, finish_reason="stop")
    items, end = await _collect(
        _provider(config, session), _request(GenerationOptions(tools=TOOLS))
    )
    assert [item for item in items if isinstance(item, str)] == ["Let me ", "look."]
    assert items[1] == ToolCallDelta(0, "call_a", "get_weather", "")
    assert end.tool_calls == ASSEMBLED[:1]
    assert end.finish_reason is FinishReason.TOOL_CALLS


COMPATIBLE_VARIANTS = {
    # Gemini, ollama/ollama#7881: no index on any fragment.
    "no-index": [
        {"tool_calls": [{"id": "call_a", "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"function": {"arguments": ASSEMBLED[0].arguments_json}}]},
        {"tool_calls": [{"id": "call_b", "function": {"name": "now", "arguments": "{"}}]},
        {"tool_calls": [{"function": {"arguments": "}"}}]},
    ],
    # Ollama: each call whole in one chunk, its arguments as an object.
    "whole-calls-as-objects": [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "function": {"name": "get_weather", "arguments": ASSEMBLED[0].arguments_json},
                },
                {"index": 1, "id": "call_b", "function": {"name": "now", "arguments": {}}},
            ]
        }
    ],
    # Ollama through LiteLLM: index 0 for every call, told apart by id.
    "index-0-for-every-call": [
        {"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "get_weather"}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ASSEMBLED[0].arguments_json}}]},
        {"tool_calls": [{"index": 0, "id": "call_b", "function": {"name": "now"}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
    ],
    # The id and name repeated on later fragments are not appended.
    "repeated-id-and-name": [
        {"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "get_weather"}}]},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "function": {"name": "get_weather", "arguments": ASSEMBLED[0].arguments_json},
                }
            ]
        },
        {
            "tool_calls": [
                {"index": 1, "id": "call_b", "function": {"name": "now", "arguments": "{}"}}
            ]
        },
    ],
}


@pytest.mark.parametrize("deltas", COMPATIBLE_VARIANTS.values(), ids=COMPATIBLE_VARIANTS.keys())
async def test_compatible_servers_tool_call_variants_assemble_the_same_calls(
    upstream: FakeUpstream,
    config: Config,
    session: aiohttp.ClientSession,
    deltas: list[dict[str, Any]],
) -> None:
    upstream.default = Script(chunks=[], stream_deltas=deltas, finish_reason="tool_calls")
    items, end = await _collect(
        _provider(config, session), _request(GenerationOptions(tools=TOOLS))
    )
    assert end.tool_calls == ASSEMBLED
    assert [(d.index, d.id) for d in items if isinstance(d, ToolCallDelta) and d.id] == [
        (0, "call_a"),
        (1, "call_b"),
    ]


async def test_a_call_with_no_id_gets_one_a_tool_turn_can_answer(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    deltas = [{"tool_calls": [{"index": 0, "function": {"name": "now", "arguments": "{}"}}]}]
    upstream.default = Script(chunks=[], stream_deltas=deltas, finish_reason="tool_calls")
    _, end = await _collect(_provider(config, session), _request(GenerationOptions(tools=TOOLS)))
    assert end.tool_calls == (ToolCall("call_0", "now", "{}"),)


async def test_a_streamed_refusal_and_reasoning_are_relayed_as_their_deltas(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    upstream.queue(
        # As recorded from OpenAI: an empty refusal opens it, then its text.
        Script(
            chunks=[], stream_deltas=[{"refusal": ""}, {"refusal": "I'm"}, {"refusal": " sorry"}]
        ),
        Script(
            chunks=["42"],
            stream_deltas=[{"reasoning_content": "Six"}, {"reasoning": " sevens"}],
        ),
    )
    provider = _provider(config, session)
    refusal, refused = await _collect(provider, _request())
    reasoning, reasoned = await _collect(provider, _request())
    assert refusal == [RefusalDelta("I'm"), RefusalDelta(" sorry")]
    assert refused.finish_reason is FinishReason.REFUSAL
    assert reasoning == ["42", ReasoningDelta("Six"), ReasoningDelta(" sevens")]
    assert reasoned.reasoning == (ReasoningBlock(text="Six sevens"),)
    assert reasoned.finish_reason is FinishReason.STOP


async def test_an_assistant_turns_reasoning_goes_back_as_reasoning_content(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    turn = MessageExtras(
        tool_calls=ASSEMBLED[1:], reasoning=(ReasoningBlock("Need "), ReasoningBlock("the time."))
    )
    messages = (
        ChatMessage(Role.USER, "time?"),
        ChatMessage(Role.ASSISTANT, "", turn),
        ChatMessage(Role.TOOL, "12:00", MessageExtras(tool_call_id="call_b")),
    )
    await _provider(config, session).complete(_request(GenerationOptions(tools=TOOLS), messages))
    assistant = upstream.received[0].body["messages"][1]
    assert assistant["reasoning_content"] == "Need the time."
    assert assistant["content"] is None
