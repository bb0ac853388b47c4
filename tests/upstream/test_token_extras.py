"""What a request carries beyond text counts toward its input estimate:
parts, tool calls and results, reasoning, images at a worst case, and the
call's tool definitions, schema and stop sequences."""

from __future__ import annotations

import pytest
from faregate_server.content import (
    GenerationOptions,
    Image,
    MessageExtras,
    ReasoningBlock,
    ResponseFormat,
    Tool,
    ToolCall,
)
from faregate_server.domain import ChatMessage, Role
from faregate_server.upstream.tokens import (
    EstimatingCounter,
    TiktokenCounter,
    TokenCounter,
    options_tokens,
)

COUNTERS = [TiktokenCounter(), EstimatingCounter()]
PLAIN = ChatMessage(Role.USER, "")


@pytest.mark.parametrize("counter", COUNTERS, ids=lambda c: c.name)
def test_each_image_counts_the_counters_worst_case(counter: TokenCounter) -> None:
    image = Image(url="https://example.com/a.png")
    two = ChatMessage(Role.USER, "", MessageExtras(parts=(image, image)))
    assert counter.count_messages([two]) - counter.count_messages([PLAIN]) >= (
        2 * counter.image_tokens
    )


@pytest.mark.parametrize("counter", COUNTERS, ids=lambda c: c.name)
def test_text_parts_tool_calls_results_and_reasoning_count_as_text(counter: TokenCounter) -> None:
    arguments = '{"path": "' + "src/module.py " * 40 + '"}'
    messages = [
        ChatMessage(Role.USER, "", MessageExtras(parts=("read " * 50,))),
        ChatMessage(
            Role.ASSISTANT,
            "",
            MessageExtras(
                tool_calls=(ToolCall("call_1", "read_file", arguments),),
                reasoning=(ReasoningBlock("think " * 50, "sig"),),
            ),
        ),
        ChatMessage(Role.TOOL, "", MessageExtras(tool_call_id="call_1")),
    ]
    framing = counter.count_messages([PLAIN] * 3)
    extra_text = counter.count_text("read " * 50 + arguments + "think " * 50)
    assert counter.count_messages(messages) - framing >= extra_text


@pytest.mark.parametrize("counter", COUNTERS, ids=lambda c: c.name)
def test_tool_definitions_schema_and_stop_sequences_count(counter: TokenCounter) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = tuple(Tool(f"tool_{n}", "Looks something up. " * 10, schema) for n in range(5))
    options = GenerationOptions(tools=tools, response_format=ResponseFormat(schema), stop=("END",))
    assert options_tokens(counter, options) > 5 * counter.count_text("Looks something up. " * 10)
    assert options_tokens(counter, GenerationOptions(seed=1)) == 0
    assert options_tokens(counter, None) == 0
