"""The embedded default config demonstrates an agent loop with no keys: its
`sim` models, offered tools, call one (streamed as fragments, assembled in
`finish`), and answer in text once the tool's result is back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import pytest
import yaml
from faregate.v1 import router_pb2

from tests.conftest import Faregate, StartFaregate, to_config

TOOLS = [router_pb2.Tool(name="search", description="Searches the docs.")]
QUESTION = router_pb2.Message(role=router_pb2.ROLE_USER, content="What is faregate?")


@pytest.fixture
async def faregate(start_faregate: StartFaregate, tmp_path: Path) -> AsyncIterator[Faregate]:
    text = resources.files("faregate_server").joinpath("default_config.yaml").read_text()
    data = yaml.safe_load(text)
    data["state"]["path"] = str(tmp_path / "faregate.db")
    for model in data["models"].values():
        model["sim"].update(first_token_delay_s=0, token_delay_s=0)
    async with start_faregate(to_config(data)) as running:
        yield running


def _answering(call: router_pb2.ToolCall) -> list[router_pb2.Message]:
    return [
        QUESTION,
        router_pb2.Message(role=router_pb2.ROLE_ASSISTANT, tool_calls=[call]),
        router_pb2.Message(role=router_pb2.ROLE_TOOL, tool_call_id=call.id, content="a gateway"),
    ]


async def test_the_default_sims_call_a_tool_then_answer_whole(faregate: Faregate) -> None:
    client = faregate.client
    called = await client.route([QUESTION], budget_key="demo", tools=TOOLS)
    assert called.finish_reason == router_pb2.FINISH_REASON_TOOL_CALLS
    [call] = called.tool_calls
    assert call.name == "search"
    assert json.loads(call.arguments_json) == {"query": "faregate"}
    answered = await client.route(_answering(call), budget_key="demo", tools=TOOLS)
    assert answered.finish_reason == router_pb2.FINISH_REASON_STOP
    assert answered.output
    assert not answered.tool_calls
    spent = (await faregate.running.state.budget("demo")).spent_nano_usd
    assert spent == called.cost_nano_usd + answered.cost_nano_usd
    assert (await faregate.running.state.budget("demo")).reserved_nano_usd == 0


async def test_the_default_sims_stream_a_tool_call_as_fragments(faregate: Faregate) -> None:
    stream = faregate.client.stream_route([QUESTION], budget_key="demo", tools=TOOLS)
    assert [text async for text in stream] == []
    assert stream.finish is not None
    assert stream.finish.finish_reason == router_pb2.FINISH_REASON_TOOL_CALLS
    [call] = stream.finish.tool_calls
    assert (call.name, call.arguments_json) == ("search", '{"query": "faregate"}')
    assert stream.finish.usage.output_tokens > 0
    answer = faregate.client.stream_route(_answering(call), budget_key="demo", tools=TOOLS)
    assert "".join([text async for text in answer])
    assert answer.finish is not None
    assert answer.finish.finish_reason == router_pb2.FINISH_REASON_STOP


async def test_tool_choice_none_gets_text(faregate: Faregate) -> None:
    reply = await faregate.client.route(
        [QUESTION],
        budget_key="demo",
        tools=TOOLS,
        tool_choice=router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_NONE),
    )
    assert reply.output
    assert not reply.tool_calls
