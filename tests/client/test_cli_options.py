"""The CLI's flags for tools, output format and sampling become the request's fields."""

from __future__ import annotations

import json

import pytest
from faregate.v1 import router_pb2
from faregate_client.__main__ import _options, build_parser, main
from faregate_client._request import build_request


def _request(*flags: str) -> router_pb2.RouteRequest:
    args = build_parser().parse_args(["hi", *flags])
    return build_request(
        router_pb2.RouteRequest, "hi", "team", _options(args, {}), generate_request_id=False
    )


def test_the_agent_flags_reach_the_request() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = _request(
        "--tool", json.dumps({"name": "weather", "description": "Weather", "parameters": schema}),
        "--tool-choice", "required",
        "--no-parallel-tool-calls",
        "--response-format", json.dumps(schema),
        "--stop", "END", "--stop", "STOP",
        "--top-p", "0.5",
        "--seed", "7",
        "--reasoning", "high",
    )  # fmt: skip

    (tool,) = request.tools
    assert (tool.name, tool.description, json.loads(tool.parameters_json)) == (
        "weather",
        "Weather",
        schema,
    )
    assert request.tool_choice.mode == router_pb2.TOOL_CHOICE_MODE_REQUIRED
    assert request.HasField("parallel_tool_calls")
    assert not request.parallel_tool_calls
    assert json.loads(request.response_format.json_schema.schema_json) == schema
    assert request.response_format.json_schema.strict
    assert list(request.stop) == ["END", "STOP"]
    assert (request.top_p, request.seed) == (0.5, 7)
    assert request.reasoning.effort == router_pb2.REASONING_EFFORT_HIGH


def test_a_tool_name_for_tool_choice_and_a_token_budget_for_reasoning() -> None:
    request = _request(
        "--tool-choice", "weather", "--reasoning", "2048", "--response-format", "json_object"
    )

    assert request.tool_choice.tool_name == "weather"
    assert request.reasoning.budget_tokens == 2048
    assert request.response_format.json_object


def test_without_the_flags_the_request_holds_none_of_those_fields() -> None:
    request = _request()

    for field in ("tool_choice", "parallel_tool_calls", "response_format", "top_p", "seed"):
        assert not request.HasField(field), field
    assert not request.HasField("reasoning")
    assert (list(request.tools), list(request.stop)) == ([], [])


@pytest.mark.parametrize(
    "flags",
    [
        ["--tool", "not json"],
        ["--tool", "[1, 2]"],
        ["--response-format", "{broken"],
        ["--reasoning", "extreme"],
    ],
)
def test_a_flag_that_does_not_parse_exits_2_before_any_call(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["hi", "--target", "127.0.0.1:1", *flags])

    assert exited.value.code == 2
