"""The Anthropic request body built from domain values: turns, merging,
tools, images, sampling, structured output, thinking and its refusals."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from faregate_server.content import (
    NO_PARAMETERS,
    GenerationOptions,
    Image,
    MessageExtras,
    Reasoning,
    ReasoningBlock,
    ReasoningEffort,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)
from faregate_server.domain import ChatMessage, Role, UpstreamRequest
from faregate_server.upstream.providers.anthropic_messages import (
    request_body,
    request_refusal,
    wire_messages,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes.anthropic_upstream import wire_problem

WEATHER = Tool(
    "get_weather", "Current weather", {"type": "object", "properties": {"city": {"type": "string"}}}
)
CALL_1 = ToolCall("toolu_1", "get_weather", '{"city": "Paris"}')
CALL_2 = ToolCall("toolu_2", "get_weather", "")


def _request(
    *messages: ChatMessage, temperature: float | None = None, **options: Any
) -> UpstreamRequest:
    return UpstreamRequest(
        upstream_model="m",
        messages=messages or (ChatMessage(Role.USER, "hi"),),
        max_output_tokens=4096,
        temperature=temperature,
        options=GenerationOptions(**options) if options else None,
    )


def _refusal(request: UpstreamRequest) -> tuple[str, str] | None:
    return request_refusal(request.temperature, request.options, request.max_output_tokens)


def _user(text: str) -> ChatMessage:
    return ChatMessage(Role.USER, text)


def _assistant(
    text: str, *calls: ToolCall, reasoning: tuple[ReasoningBlock, ...] = ()
) -> ChatMessage:
    return ChatMessage(Role.ASSISTANT, text, MessageExtras(tool_calls=calls, reasoning=reasoning))


def _tool(call_id: str, text: str) -> ChatMessage:
    return ChatMessage(Role.TOOL, text, MessageExtras(tool_call_id=call_id))


def test_a_plain_conversation_keeps_string_contents_and_the_system_field() -> None:
    body = request_body(
        _request(ChatMessage(Role.SYSTEM, "be brief"), _user("hi"),
                 ChatMessage(Role.ASSISTANT, "yo"), _user("again")),
        stream=False,
    )  # fmt: skip
    assert body == {
        "model": "m",
        "max_tokens": 4096,
        "system": "be brief",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "again"},
        ],
    }


def test_tool_turns_become_one_user_message_of_tool_results_before_any_text() -> None:
    messages = wire_messages(
        [
            _user("weather in Paris and Rome?"),
            _assistant("I'll check.", CALL_1, CALL_2),
            _tool("toolu_1", "14C, rain"),
            _tool("toolu_2", "20C, sun"),
            _user("and tomorrow?"),
        ]
    )
    assert messages == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "I'll check."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "14C, rain"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "20C, sun"},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    assert wire_problem({"max_tokens": 10, "messages": messages}) is None


def test_a_user_text_between_calls_and_results_is_moved_after_the_results() -> None:
    messages = wire_messages(
        [_user("q"), _assistant("", CALL_1), _user("hurry"), _tool("toolu_1", "done")]
    )
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"},
        {"type": "text", "text": "hurry"},
    ]
    assert wire_problem({"max_tokens": 10, "messages": messages}) is None


def test_consecutive_same_role_turns_merge_and_empty_texts_are_left_out() -> None:
    messages = wire_messages([_user("a"), _user("b"), _assistant("", CALL_1), _tool("toolu_1", "")])
    assert messages[0] == {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    # An assistant turn of calls only holds no empty text block.
    assert [block["type"] for block in messages[1]["content"]] == ["tool_use"]


def test_reasoning_is_passed_back_first_as_received_and_foreign_blocks_are_left_out() -> None:
    reasoning = (
        ReasoningBlock(text="let me think", signature="sig-1"),
        ReasoningBlock(redacted=b"EmwKAhgB"),
        ReasoningBlock(text="another provider's, unsigned"),
    )
    messages = wire_messages([_user("q"), _assistant("ok", CALL_1, reasoning=reasoning),
                              _tool("toolu_1", "r")])  # fmt: skip
    assert messages[1]["content"][:3] == [
        {"type": "thinking", "thinking": "let me think", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "EmwKAhgB"},
        {"type": "text", "text": "ok"},
    ]


def test_images_are_base64_or_url_sources() -> None:
    parts = ("look", Image(data=b"\x89PNG", media_type="image/png"), Image(url="https://x/a.jpg"))
    messages = wire_messages([ChatMessage(Role.USER, "", MessageExtras(parts=parts))])
    assert messages[0]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw=="}},
        {"type": "image", "source": {"type": "url", "url": "https://x/a.jpg"}},
    ]  # fmt: skip


def test_a_tool_result_with_an_image_holds_blocks() -> None:
    parts = ("chart:", Image(url="https://x/c.png"))
    result = ChatMessage(Role.TOOL, "", MessageExtras(parts=parts, tool_call_id="toolu_1"))
    messages = wire_messages([_user("q"), _assistant("", CALL_1), result])
    assert messages[2]["content"][0]["content"] == [
        {"type": "text", "text": "chart:"},
        {"type": "image", "source": {"type": "url", "url": "https://x/c.png"}},
    ]


def test_tools_stop_and_top_p_map_to_their_fields() -> None:
    body = request_body(
        _request(tools=(WEATHER, Tool("now", "", NO_PARAMETERS)), stop=("END",), top_p=0.5),
        stream=True,
    )
    assert body["tools"] == [
        {"name": "get_weather", "description": "Current weather",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]  # fmt: skip
    assert body["stop_sequences"] == ["END"]
    assert body["top_p"] == 0.5
    assert body["stream"] is True
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "parallel", "wire"),
    [
        (ToolChoice(ToolChoiceMode.AUTO), None, {"type": "auto"}),
        (ToolChoice(ToolChoiceMode.REQUIRED), None, {"type": "any"}),
        (ToolChoice(ToolChoiceMode.TOOL, "get_weather"), None,
         {"type": "tool", "name": "get_weather"}),
        (ToolChoice(ToolChoiceMode.NONE), False, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice(ToolChoiceMode.REQUIRED), False,
         {"type": "any", "disable_parallel_tool_use": True}),
        (None, True, None),
    ],
)  # fmt: skip
def test_tool_choice_and_parallel_tool_calls(
    choice: ToolChoice | None, parallel: bool | None, wire: dict[str, Any] | None
) -> None:
    body = request_body(
        _request(tools=(WEATHER,), tool_choice=choice, parallel_tool_calls=parallel), stream=False
    )
    assert body.get("tool_choice") == wire


def test_a_json_schema_is_output_config_format_and_json_object_is_refused() -> None:
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    body = request_body(_request(response_format=ResponseFormat(schema, "x", True)), stream=False)
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert _refusal(_request(response_format=ResponseFormat())) == (
        "response_format.json_object",
        "Anthropic has no JSON-object mode: give a json_schema instead",
    )


def test_a_budget_is_manual_thinking_and_an_effort_alone_is_adaptive() -> None:
    manual = request_body(_request(reasoning=Reasoning(budget_tokens=2048)), stream=False)
    assert manual["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "output_config" not in manual
    adaptive = request_body(
        _request(reasoning=Reasoning(effort=ReasoningEffort.HIGH)), stream=False
    )
    assert adaptive["thinking"] == {"type": "adaptive"}
    assert adaptive["output_config"] == {"effort": "high"}
    both = request_body(_request(reasoning=Reasoning(ReasoningEffort.LOW, 1024)), stream=False)
    assert both["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert both["output_config"] == {"effort": "low"}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_request(reasoning=Reasoning(budget_tokens=1000)), "reasoning.budget_tokens"),
        (_request(reasoning=Reasoning(budget_tokens=4096)), "reasoning.budget_tokens"),
        (_request(reasoning=Reasoning(ReasoningEffort.LOW), tools=(WEATHER,),
                  tool_choice=ToolChoice(ToolChoiceMode.REQUIRED)), "tool_choice"),
        (_request(reasoning=Reasoning(ReasoningEffort.LOW), tools=(WEATHER,),
                  tool_choice=ToolChoice(ToolChoiceMode.TOOL, "get_weather")), "tool_choice"),
        (_request(temperature=0.3, reasoning=Reasoning(ReasoningEffort.LOW)), "temperature"),
        (_request(top_p=0.5, reasoning=Reasoning(ReasoningEffort.LOW)), "top_p"),
    ],
)  # fmt: skip
def test_what_thinking_cannot_take_is_refused_naming_the_field(
    request_: UpstreamRequest, field: str
) -> None:
    refused = _refusal(request_)
    assert refused is not None
    assert refused[0] == field


def test_thinking_takes_auto_tools_a_temperature_of_1_and_a_high_top_p() -> None:
    request = _request(
        temperature=1.0,
        top_p=0.97,
        tools=(WEATHER,),
        tool_choice=ToolChoice(ToolChoiceMode.AUTO),
        reasoning=Reasoning(budget_tokens=2048),
    )
    assert _refusal(request) is None
    assert wire_problem(request_body(request, stream=False)) is None


_TURNS = st.lists(
    st.one_of(
        st.builds(_user, st.sampled_from(["", "a", "b"])),
        st.builds(lambda text: _assistant(text, CALL_1), st.sampled_from(["", "c"])),
        st.builds(_assistant, st.sampled_from(["d"])),
        st.builds(_tool, st.sampled_from(["toolu_1", "toolu_2"]), st.sampled_from(["", "r"])),
        st.just(ChatMessage(Role.SYSTEM, "s")),
    ),
    max_size=8,
)


@given(_TURNS)
@settings(max_examples=200, deadline=None)
def test_any_conversation_alternates_roles_with_tool_results_first_and_loses_no_block(
    turns: list[ChatMessage],
) -> None:
    messages = wire_messages(turns)
    roles = [message["role"] for message in messages]
    assert all(first != second for first, second in itertools.pairwise(roles))
    kept: list[dict[str, Any]] = []
    for message in messages:
        content = message["content"]
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        kinds = [block["type"] for block in blocks]
        if message["role"] == "user":
            results = kinds.count("tool_result")
            assert kinds[:results] == ["tool_result"] * results
        if isinstance(content, list):
            assert all(block["text"] for block in blocks if block["type"] == "text")
        kept.extend(blocks)
    # Every result and call is sent once, in the order of the conversation.
    sent = [b.get("tool_use_id") or b.get("id") for b in kept if b["type"] != "text"]
    expected = [
        m.extras.tool_call_id or m.extras.tool_calls[0].id
        for m in turns
        if m.extras is not None and (m.extras.tool_call_id or m.extras.tool_calls)
    ]
    assert sent == expected
