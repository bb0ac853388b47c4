"""An agent's tool loop through faregate to an OpenAI-compatible upstream,
whole and streamed, with the typed client: tools go out, tool calls come
back (streamed as fragments, assembled in `finish`), the results go back as
tool turns, a final answer comes; each turn charged exactly. A route whose
first candidate lacks the `tools` capability sends a request with tools to
the one that has it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from faregate.v1 import router_pb2
from faregate_client._request import build_request

from tests.conftest import Faregate, StartFaregate, to_config
from tests.fakes.upstream import FakeUpstream, Script, openai_tool_call_deltas

GPT_IN = 2_500  # nano-USD per token: gpt-fake's 2.50 USD per 1M
GPT_OUT = 10_000
GPT_CAP = 100  # gpt-fake's max_output_tokens

WEATHER = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})
TOOLS = [
    router_pb2.Tool(name="get_weather", description="Current weather", parameters_json=WEATHER),
    router_pb2.Tool(name="now", description="The time"),
]
CALLS = [
    {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Edinburgh"}'},
    {"id": "call_b", "name": "now", "arguments": "{}"},
]


@pytest.fixture
async def faregate(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    config_data["models"]["gpt-fake"]["capabilities"] = ["tools"]
    # cheap-fake is far cheaper, so it wins a plain request that prefers
    # cost; it has no tools.
    config_data["routes"]["agents"] = ["cheap-fake", "gpt-fake"]
    async with start_faregate(to_config(config_data)) as running:
        yield running


def _results_turns(calls: Any) -> list[router_pb2.Message]:
    """The assistant's turn with its calls, then a tool turn answering each."""
    return [
        router_pb2.Message(role=router_pb2.ROLE_ASSISTANT, tool_calls=list(calls)),
        *(
            router_pb2.Message(
                role=router_pb2.ROLE_TOOL, tool_call_id=call.id, content=f"{call.name}: ok"
            )
            for call in calls
        ),
    ]


def _assert_results_sent(upstream: FakeUpstream) -> None:
    sent = upstream.received[1].body
    assert sent["model"] == "gpt-fake"
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in CALLS
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "get_weather: ok"},
        {"role": "tool", "tool_call_id": "call_b", "content": "now: ok"},
    ]


async def test_a_whole_tool_loop_calls_two_tools_then_answers(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.queue(
        Script(chunks=[], tool_calls=CALLS, finish_reason="tool_calls", usage=(40, 12)),
        Script(chunks=["Rain, at noon."], usage=(70, 5)),
    )
    question = [("user", "Weather in Edinburgh, and the time?")]
    client = faregate.client

    called = await client.route(question, budget_key="team", model="agents", tools=TOOLS)
    assert called.model_used == "gpt-fake"
    assert called.finish_reason == router_pb2.FINISH_REASON_TOOL_CALLS
    assert called.output == ""
    assert [(c.id, c.name, c.arguments_json) for c in called.tool_calls] == [
        (c["id"], c["name"], c["arguments"]) for c in CALLS
    ]
    answered = await client.route(
        [*client_messages(question), *_results_turns(called.tool_calls)],
        budget_key="team",
        model="agents",
        tools=TOOLS,
    )
    assert answered.output == "Rain, at noon."
    assert answered.finish_reason == router_pb2.FINISH_REASON_STOP

    tools_sent = upstream.received[0].body["tools"]
    assert [tool["function"]["name"] for tool in tools_sent] == ["get_weather", "now"]
    _assert_results_sent(upstream)
    assert called.cost_nano_usd == 40 * GPT_IN + 12 * GPT_OUT
    assert answered.cost_nano_usd == 70 * GPT_IN + 5 * GPT_OUT
    assert await faregate.spent_nano_usd() == called.cost_nano_usd + answered.cost_nano_usd
    assert await faregate.reserved_nano_usd() == 0


async def test_a_streamed_tool_loop_assembles_interleaved_fragments_in_finish(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.queue(
        Script(
            chunks=["Let me check."],
            stream_deltas=openai_tool_call_deltas(CALLS, 3, interleave=True),
            finish_reason="tool_calls",
            usage=(40, 15),
        ),
        Script(chunks=["Rain,", " at noon."], usage=(70, 5)),
    )
    question = [("user", "Weather in Edinburgh, and the time?")]
    client = faregate.client

    first = client.stream_route(question, budget_key="team", model="agents", tools=TOOLS)
    assert [text async for text in first] == ["Let me check."]
    assert first.start is not None
    assert first.finish is not None
    assert first.start.model_used == "gpt-fake"
    assert first.finish.finish_reason == router_pb2.FINISH_REASON_TOOL_CALLS
    calls = first.finish.tool_calls
    assert [(c.id, c.name, c.arguments_json) for c in calls] == [
        (c["id"], c["name"], c["arguments"]) for c in CALLS
    ]
    second = client.stream_route(
        [*client_messages(question), *_results_turns(calls)],
        budget_key="team",
        model="agents",
        tools=TOOLS,
    )
    assert [text async for text in second] == ["Rain,", " at noon."]
    assert second.finish is not None
    assert second.finish.finish_reason == router_pb2.FINISH_REASON_STOP

    _assert_results_sent(upstream)
    assert first.finish.cost_nano_usd == 40 * GPT_IN + 15 * GPT_OUT
    assert second.finish.cost_nano_usd == 70 * GPT_IN + 5 * GPT_OUT
    spent = first.finish.cost_nano_usd + second.finish.cost_nano_usd
    assert await faregate.spent_nano_usd() == spent
    assert await faregate.reserved_nano_usd() == 0


async def test_each_fragment_reaches_the_caller_as_a_delta_in_order(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    deltas = [
        {"content": "Checking"},
        *openai_tool_call_deltas(CALLS[:1], 4),
        {"refusal": "No more."},
    ]
    upstream.default = Script(chunks=[], stream_deltas=deltas, finish_reason="stop")
    request = build_request(
        router_pb2.StreamRouteRequest,
        "weather?",
        "team",
        {"model": "gpt-fake", "tools": TOOLS},
        generate_request_id=False,
    )
    events = [event async for event in faregate.client._stub.StreamRoute(request)]

    kinds = [event.WhichOneof("event") for event in events]
    assert (kinds[0], kinds[-1]) == ("start", "finish")
    fragments = [event.delta for event in events[1:-1]]
    assert fragments[0].text == "Checking"
    first_call = fragments[1].tool_call
    assert (first_call.index, first_call.id, first_call.name) == (0, "call_a", "get_weather")
    arguments = "".join(f.tool_call.arguments_json for f in fragments if f.HasField("tool_call"))
    assert arguments == CALLS[0]["arguments"]
    assert fragments[-1].refusal == "No more."
    # A refusal is the answer's end, whatever else came before it.
    assert events[-1].finish.finish_reason == router_pb2.FINISH_REASON_REFUSAL
    assert [c.name for c in events[-1].finish.tool_calls] == ["get_weather"]


async def test_a_stream_without_usage_charges_tool_call_arguments_as_output(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    long_arguments = json.dumps({"city": "Edinburgh " * 20})
    calls = [{"id": "call_a", "name": "get_weather", "arguments": long_arguments}]
    upstream.default = Script(chunks=[], tool_calls=calls, finish_reason="tool_calls", usage=None)
    stream = faregate.client.stream_route(
        "weather?", budget_key="team", model="gpt-fake", tools=TOOLS
    )
    assert [text async for text in stream] == []
    assert stream.start is not None
    assert stream.finish is not None
    input_tokens = (stream.start.reserved_nano_usd - GPT_CAP * GPT_OUT) // GPT_IN
    usage = stream.finish.usage
    assert usage.input_tokens == input_tokens
    # The name and the arguments' text, counted by tiktoken: far more than
    # one token per fragment.
    assert usage.output_tokens > 20
    assert stream.finish.cost_nano_usd == (
        usage.input_tokens * GPT_IN + usage.output_tokens * GPT_OUT
    )
    assert await faregate.spent_nano_usd() == stream.finish.cost_nano_usd
    assert await faregate.reserved_nano_usd() == 0


async def test_tools_go_to_the_candidate_with_the_tools_capability(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["ok"], usage=(10, 1))
    plain = await faregate.client.route("hi", budget_key="team", model="agents", prefer="cost")
    tooled = await faregate.client.route(
        "hi", budget_key="team", model="agents", tools=TOOLS, prefer="cost", explain=True
    )
    assert plain.model_used == "cheap-fake"
    assert tooled.model_used == "gpt-fake"
    reasons = {candidate.model: candidate.reason for candidate in tooled.candidates}
    assert reasons["cheap-fake"] == "tools: the model lacks tools, which tools need"
    assert [received.body["model"] for received in upstream.received] == [
        "cheap-fake",
        "gpt-fake",
    ]


def client_messages(messages: list[tuple[str, str]]) -> list[router_pb2.Message]:
    roles = {"user": router_pb2.ROLE_USER, "system": router_pb2.ROLE_SYSTEM}
    return [router_pb2.Message(role=roles[role], content=text) for role, text in messages]


async def test_a_whole_answer_without_usage_charges_tool_call_arguments_as_output(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    long_arguments = json.dumps({"city": "Edinburgh " * 20})
    calls = [{"id": "call_a", "name": "get_weather", "arguments": long_arguments}]
    upstream.default = Script(chunks=[], tool_calls=calls, finish_reason="tool_calls", usage=None)
    reply = await faregate.client.route(
        "weather?", budget_key="team", model="gpt-fake", tools=TOOLS
    )
    assert [call.arguments_json for call in reply.tool_calls] == [long_arguments]
    input_tokens = (reply.reserved_nano_usd - GPT_CAP * GPT_OUT) // GPT_IN
    assert reply.usage.input_tokens == input_tokens
    assert reply.usage.output_tokens > 20  # the name and arguments, counted
    assert reply.cost_nano_usd == input_tokens * GPT_IN + reply.usage.output_tokens * GPT_OUT
    assert await faregate.spent_nano_usd() == reply.cost_nano_usd
