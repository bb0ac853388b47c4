"""An agent loop through the real server to a fake Anthropic upstream, with
the typed client: a tool call with thinking comes back (whole, and streamed,
with the assembled calls and reasoning in the finish), the tool's result and
the thinking go back as the API requires, and a request Anthropic would
refuse with thinking on fails before any call. The fragments of a streamed
call or of thinking, as they arrive, are tested at the adapter
(tests/upstream/test_anthropic_adapter.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import InvalidArgument
from faregate_server.upstream.tokens import EstimatingCounter

from tests.conftest import Faregate, StartFaregate, base_config, to_config
from tests.fakes.anthropic_upstream import AnthropicScript, FakeAnthropic

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOL = router_pb2.Tool(
    name="get_weather", description="Weather", parameters_json=json.dumps(SCHEMA)
)
THINKING = {"type": "thinking", "thinking": "The user wants weather.", "signature": "c2lnLWE="}
CALL = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
REASONING = router_pb2.Reasoning(budget_tokens=1024)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.aclose()


@pytest.fixture
async def faregate(start_faregate: StartFaregate, fake: FakeAnthropic) -> AsyncIterator[Faregate]:
    data = base_config(fake.base_url)
    data["models"]["claude-fake"].update(
        {
            "max_output_tokens": 2048,
            "capabilities": ["tools", "vision", "json_mode"],
            "cached_input_usd_per_mtok": 0.30,
        }
    )
    data["routes"] = {"default": ["claude-fake"]}
    async with start_faregate(to_config(data)) as running:
        yield running


def _question() -> router_pb2.Message:
    return router_pb2.Message(role=router_pb2.ROLE_USER, content="weather in Paris?")


async def test_a_tool_loop_with_thinking_round_trips(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    fake.queue(AnthropicScript([THINKING, CALL], "tool_use"))
    first = await faregate.client.route(
        [_question()], budget_key="team", tools=[TOOL], reasoning=REASONING
    )
    assert first.finish_reason == router_pb2.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.name, json.loads(c.arguments_json)) for c in first.tool_calls] == [
        ("toolu_01", "get_weather", {"city": "Paris"})
    ]
    assert [(r.text, r.signature) for r in first.reasoning] == [
        ("The user wants weather.", "c2lnLWE=")
    ]
    history = [
        _question(),
        router_pb2.Message(
            role=router_pb2.ROLE_ASSISTANT,
            tool_calls=first.tool_calls,
            reasoning=first.reasoning,
        ),
        router_pb2.Message(role=router_pb2.ROLE_TOOL, content="14C", tool_call_id="toolu_01"),
    ]
    second = await faregate.client.route(
        history, budget_key="team", tools=[TOOL], reasoning=REASONING
    )
    # The fake answers 400 to a turn the API would refuse: this one passed.
    assert second.output == "Hello"
    sent = fake.received[1]
    assert sent["messages"][1]["content"][0] == THINKING
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "14C"}
    ]
    assert sent["tools"] == [
        {"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}
    ]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_a_streamed_tool_call_arrives_assembled_in_the_finish(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    fake.queue(AnthropicScript([THINKING, {"type": "text", "text": "Checking."}, CALL], "tool_use"))
    stream = faregate.client.stream_route(
        [_question()], budget_key="team", tools=[TOOL], reasoning=REASONING
    )
    assert [text async for text in stream] == ["Checking."]
    assert stream.finish is not None
    assert stream.finish.finish_reason == router_pb2.FINISH_REASON_TOOL_CALLS
    assert [(c.id, json.loads(c.arguments_json)) for c in stream.finish.tool_calls] == [
        ("toolu_01", {"city": "Paris"})
    ]
    assert [r.signature for r in stream.finish.reasoning] == ["c2lnLWE="]


async def test_a_forced_tool_with_thinking_is_refused_before_any_call(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await faregate.client.route(
            [_question()],
            budget_key="team",
            tools=[TOOL],
            tool_choice=router_pb2.ToolChoice(tool_name="get_weather"),
            reasoning=REASONING,
        )
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.reason == "MODEL_CANNOT_SERVE"
    assert refused.value.field_violations == {
        "tool_choice": "Anthropic models cannot be forced to call a tool while reasoning"
    }
    assert fake.received == []
    assert await faregate.reserved_nano_usd() == 0


async def test_an_image_and_a_schema_reach_anthropic_as_its_blocks_and_output_config(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    fake.queue(AnthropicScript([{"type": "text", "text": '{"city": "Paris"}'}]))
    schema = {**SCHEMA, "additionalProperties": False}
    picture = router_pb2.Message(
        role=router_pb2.ROLE_USER,
        parts=[
            router_pb2.ContentPart(text="Where is this?"),
            router_pb2.ContentPart(image=router_pb2.Image(data=b"\x89PNG", media_type="image/png")),
        ],
    )
    reply = await faregate.client.route(
        [picture],
        budget_key="team",
        response_format=router_pb2.ResponseFormat(
            json_schema=router_pb2.JsonSchema(name="place", schema_json=json.dumps(schema))
        ),
        stop=["END"],
        top_p=0.9,
    )
    assert json.loads(reply.output) == {"city": "Paris"}
    sent = fake.received[0]
    assert sent["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="},
    }
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert (sent["stop_sequences"], sent["top_p"]) == (["END"], 0.9)


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_answer_whose_usage_is_not_believed_keeps_its_tool_calls(
    faregate: Faregate, fake: FakeAnthropic, streamed: bool
) -> None:
    # Usage past the output cap is implausible: charged the reservation
    # instead, and the answer it came with is still the caller's.
    fake.queue(AnthropicScript([THINKING, CALL], "tool_use", usage=(11, 10**9)))
    question = [_question()]
    if streamed:
        stream = faregate.client.stream_route(
            question, budget_key="team", tools=[TOOL], reasoning=REASONING
        )
        assert [text async for text in stream] == []
        assert stream.finish is not None
        calls, reasoning = stream.finish.tool_calls, stream.finish.reasoning
        cost, reserved = stream.finish.cost_nano_usd, stream.start.reserved_nano_usd  # type: ignore[union-attr]
    else:
        reply = await faregate.client.route(
            question, budget_key="team", tools=[TOOL], reasoning=REASONING
        )
        calls, reasoning = reply.tool_calls, reply.reasoning
        cost, reserved = reply.cost_nano_usd, reply.reserved_nano_usd

    assert cost == reserved  # the usage was not believed
    assert [(c.id, json.loads(c.arguments_json)) for c in calls] == [
        ("toolu_01", {"city": "Paris"})
    ]
    assert [r.signature for r in reasoning] == ["c2lnLWE="]


async def test_a_stream_cut_mid_thinking_is_charged_the_input_anthropic_reported(
    faregate: Faregate, fake: FakeAnthropic
) -> None:
    # message_start reports 50 uncached and 200 cached input tokens (faregate
    # counted far fewer); the connection drops inside the thinking block
    # (after message_start, its start, a ping and its first delta), once
    # that delta has reached the caller.
    block = {"input_tokens": 50, "cache_read_input_tokens": 200, "output_tokens": 9}
    read = asyncio.Event()
    fake.queue(
        AnthropicScript(
            [THINKING, CALL], "tool_use", usage_block=block, drop_after_events=4, drop_when=read
        )
    )
    request = router_pb2.StreamRouteRequest(
        messages=[_question()], budget_key="team", reasoning=REASONING
    )
    thought = ""
    async with grpc.aio.insecure_channel(faregate.target) as channel:
        stream = router_pb2_grpc.RouterServiceStub(channel).StreamRoute(request)
        code = grpc.StatusCode.OK
        try:
            async for event in stream:
                thought += event.delta.reasoning
                if thought:
                    read.set()
        except grpc.aio.AioRpcError as error:
            code = error.code()

    assert code == grpc.StatusCode.ABORTED  # StreamInterrupted
    assert thought == THINKING["thinking"][: len(THINKING["thinking"]) // 2]
    output_tokens = EstimatingCounter().count_text(thought)
    # 50 at $3, 200 read at $0.30, the delivered thinking at $15 (per token: 3,000, 300, 15,000).
    assert await faregate.spent_nano_usd() == 50 * 3_000 + 200 * 300 + output_tokens * 15_000
    assert await faregate.reserved_nano_usd() == 0
