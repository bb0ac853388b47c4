"""route_call on the fields beyond plain chat: each is read into the domain,
and each rule refuses its failing example with a violation naming the field,
every violation at once."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faregate.v1 import router_pb2
from faregate_server.config.schema import ServerConfig
from faregate_server.content import (
    NO_PARAMETERS,
    Feature,
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
from faregate_server.domain import ChatMessage, Role
from faregate_server.errors import MAX_SHOWN_VIOLATIONS, MORE_VIOLATIONS_FIELD, InvalidRequest
from faregate_server.rpc.status import rich_status
from faregate_server.rpc.translate import AnyRouteRequest, route_call
from faregate_server.rpc.translate_messages import (
    MAX_IMAGE_URL_CHARS,
    MAX_PARTS,
    MAX_REASONING_BLOCKS,
    MAX_TOOL_CALL_ID_CHARS,
    MAX_TOOL_CALLS,
)
from faregate_server.rpc.translate_options import (
    MAX_JSON_CHARS,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
    MAX_TOOLS,
)
from google.rpc import error_details_pb2, status_pb2

SETTINGS = ServerConfig()
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}}

Message = router_pb2.Message


def _user(content: str = "hi", **fields: Any) -> router_pb2.Message:
    return Message(role=router_pb2.ROLE_USER, content=content, **fields)


def _call(call_id: str = "call_1", name: str = "read_file") -> router_pb2.ToolCall:
    return router_pb2.ToolCall(id=call_id, name=name, arguments_json='{"path": "a.py"}')


def _assistant_calling(*call_ids: str) -> router_pb2.Message:
    return Message(
        role=router_pb2.ROLE_ASSISTANT, tool_calls=[_call(call_id) for call_id in call_ids]
    )


def _tool_turn(call_id: str, content: str = "print(1)") -> router_pb2.Message:
    return Message(role=router_pb2.ROLE_TOOL, content=content, tool_call_id=call_id)


def _tool(name: str = "read_file", parameters: str = json.dumps(SCHEMA)) -> router_pb2.Tool:
    return router_pb2.Tool(name=name, description="Reads a file.", parameters_json=parameters)


def _request(**fields: Any) -> router_pb2.RouteRequest:
    defaults: dict[str, Any] = {"messages": [_user()], "budget_key": "team"}
    return router_pb2.RouteRequest(**(defaults | fields))


def _violations(request: AnyRouteRequest, settings: ServerConfig = SETTINGS) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as refused:
        route_call(request, "", settings)
    return refused.value.violations


def _image_part(**image: Any) -> router_pb2.ContentPart:
    return router_pb2.ContentPart(image=router_pb2.Image(**image))


# Read into the domain.


def test_a_plain_request_holds_no_extras_options_or_features() -> None:
    call = route_call(_request(), "", SETTINGS)
    assert call.messages == (ChatMessage(Role.USER, "hi"),)
    assert call.messages[0].extras is None
    assert call.options is None
    assert call.features == frozenset()


def test_a_tool_loop_is_read_into_the_domain() -> None:
    request = _request(
        messages=[
            _user("read a.py"),
            Message(
                role=router_pb2.ROLE_ASSISTANT,
                content="Reading it.",
                tool_calls=[_call()],
                reasoning=[router_pb2.ReasoningBlock(text="I should read it", signature="sig")],
            ),
            _tool_turn("call_1"),
        ],
        tools=[_tool(), _tool("list_dir", parameters="")],
        tool_choice=router_pb2.ToolChoice(tool_name="read_file"),
        parallel_tool_calls=False,
    )
    call = route_call(request, "", SETTINGS)
    assert call.messages == (
        ChatMessage(Role.USER, "read a.py"),
        ChatMessage(
            Role.ASSISTANT,
            "Reading it.",
            MessageExtras(
                tool_calls=(ToolCall("call_1", "read_file", '{"path": "a.py"}'),),
                reasoning=(ReasoningBlock("I should read it", "sig"),),
            ),
        ),
        ChatMessage(Role.TOOL, "print(1)", MessageExtras(tool_call_id="call_1")),
    )
    assert call.options == GenerationOptions(
        tools=(
            Tool("read_file", "Reads a file.", SCHEMA),
            Tool("list_dir", "Reads a file.", NO_PARAMETERS),
        ),
        tool_choice=ToolChoice(ToolChoiceMode.TOOL, "read_file"),
        parallel_tool_calls=False,
    )
    assert call.features == {
        Feature.TOOLS,
        Feature.TOOL_CHOICE,
        Feature.PARALLEL_TOOL_CALLS,
        Feature.TOOL_CALLS,
        Feature.TOOL_RESULTS,
        Feature.REASONING_BLOCKS,
    }


def test_parts_and_images_are_read_in_order() -> None:
    parts = [
        router_pb2.ContentPart(text="What is in these?"),
        _image_part(url="https://example.com/a.png"),
        _image_part(data=PNG, media_type="image/png"),
    ]
    call = route_call(_request(messages=[_user("", parts=parts)]), "", SETTINGS)
    assert call.messages[0] == ChatMessage(
        Role.USER,
        "",
        MessageExtras(
            parts=(
                "What is in these?",
                Image(url="https://example.com/a.png"),
                Image(data=PNG, media_type="image/png"),
            )
        ),
    )
    assert call.features == {Feature.CONTENT_PARTS, Feature.IMAGES}


def test_sampling_format_and_reasoning_options_are_read() -> None:
    request = _request(
        stop=["\n\n", "END"],
        top_p=0.9,
        seed=-7,
        max_output_tokens=2000,
        reasoning=router_pb2.Reasoning(effort=router_pb2.REASONING_EFFORT_HIGH, budget_tokens=1024),
        response_format=router_pb2.ResponseFormat(
            json_schema=router_pb2.JsonSchema(
                name="answer", schema_json=json.dumps(SCHEMA), strict=True
            )
        ),
    )
    call = route_call(request, "", SETTINGS)
    assert call.options == GenerationOptions(
        stop=("\n\n", "END"),
        top_p=0.9,
        seed=-7,
        reasoning=Reasoning(ReasoningEffort.HIGH, 1024),
        response_format=ResponseFormat(SCHEMA, "answer", strict=True),
    )
    assert call.features == {
        Feature.STOP,
        Feature.TOP_P,
        Feature.SEED,
        Feature.REASONING,
        Feature.RESPONSE_FORMAT,
    }


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        (router_pb2.ResponseFormat(json_object=True), ResponseFormat()),
        (router_pb2.ResponseFormat(json_object=False), None),
        (router_pb2.ResponseFormat(), None),
        (
            router_pb2.ResponseFormat(json_schema=router_pb2.JsonSchema(schema_json="{}")),
            ResponseFormat({}, "response"),
        ),
    ],
)
def test_response_formats(
    response_format: router_pb2.ResponseFormat, expected: ResponseFormat | None
) -> None:
    options = route_call(_request(response_format=response_format), "", SETTINGS).options
    assert options is not None
    assert options.response_format == expected


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (router_pb2.ToolChoice(), None),
        (router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_UNSPECIFIED), None),
        (router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_AUTO), ToolChoiceMode.AUTO),
        (router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_NONE), ToolChoiceMode.NONE),
        (
            router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_REQUIRED),
            ToolChoiceMode.REQUIRED,
        ),
    ],
)
def test_tool_choice_modes(choice: router_pb2.ToolChoice, expected: ToolChoiceMode | None) -> None:
    options = route_call(_request(tools=[_tool()], tool_choice=choice), "", SETTINGS).options
    assert options is not None
    assert options.tool_choice == (None if expected is None else ToolChoice(expected))


def test_a_reasoning_effort_alone_is_enough() -> None:
    request = _request(reasoning=router_pb2.Reasoning(effort=router_pb2.REASONING_EFFORT_LOW))
    options = route_call(request, "", SETTINGS).options
    assert options is not None
    assert options.reasoning == Reasoning(ReasoningEffort.LOW)


def test_a_message_with_parts_only_counts_as_content() -> None:
    parts = [router_pb2.ContentPart(text="hi")]
    call = route_call(_request(messages=[_user("", parts=parts)]), "", SETTINGS)
    assert call.messages[0].extras == MessageExtras(parts=("hi",))


def test_an_assistant_turn_with_tool_calls_only_counts_as_content() -> None:
    route_call(_request(messages=[_assistant_calling("call_1")]), "", SETTINGS)


def test_a_stream_request_reads_the_same_fields() -> None:
    request = router_pb2.StreamRouteRequest(
        messages=[_user()], budget_key="team", tools=[_tool()], top_p=0.5
    )
    options = route_call(request, "", SETTINGS).options
    assert options is not None
    assert options.tools[0].name == "read_file"
    assert options.top_p == 0.5


# Each rule, with a failing example.

BAD_REQUESTS = [
    pytest.param(
        {"messages": [_user("hi", parts=[router_pb2.ContentPart(text="hi")])]},
        {"messages[0].parts": "must be empty when content is set"},
        id="content-and-parts",
    ),
    pytest.param(
        {"messages": [_user("", parts=[router_pb2.ContentPart()])]},
        {"messages[0].parts[0]": "must hold text or an image"},
        id="empty-part",
    ),
    pytest.param(
        {"messages": [_user("", parts=[router_pb2.ContentPart(text="")])]},
        {"messages[0].parts[0].text": "must not be empty"},
        id="empty-text-part",
    ),
    pytest.param(
        {"messages": [_user("", parts=[router_pb2.ContentPart(text="a")] * (MAX_PARTS + 1))]},
        {"messages[0].parts": f"has {MAX_PARTS + 1} parts; at most {MAX_PARTS} are allowed"},
        id="too-many-parts",
    ),
    pytest.param(
        {"messages": [_assistant_calling(*(f"call_{n}" for n in range(MAX_TOOL_CALLS + 1)))]},
        {
            "messages[0].tool_calls": (
                f"has {MAX_TOOL_CALLS + 1} calls; at most {MAX_TOOL_CALLS} are allowed"
            )
        },
        id="too-many-tool-calls",
    ),
    pytest.param(
        {
            "messages": [
                _user(),
                Message(
                    role=router_pb2.ROLE_ASSISTANT,
                    content="ok",
                    reasoning=[router_pb2.ReasoningBlock(text="t")] * (MAX_REASONING_BLOCKS + 1),
                ),
            ]
        },
        {
            "messages[1].reasoning": (
                f"has {MAX_REASONING_BLOCKS + 1} blocks; at most {MAX_REASONING_BLOCKS} are allowed"
            )
        },
        id="too-many-reasoning-blocks",
    ),
    pytest.param(
        {"messages": [_user("hi", tool_calls=[_call()] * (MAX_TOOL_CALLS + 1))]},
        {
            "messages[0].tool_calls": (
                "only an assistant message carries tool calls;"
                f" has {MAX_TOOL_CALLS + 1} calls; at most {MAX_TOOL_CALLS} are allowed"
            )
        },
        id="too-many-tool-calls-on-a-user-turn-names-both",
    ),
    pytest.param(
        {
            "messages": [
                _user(),
                Message(
                    role=router_pb2.ROLE_ASSISTANT,
                    parts=[router_pb2.ContentPart(image=router_pb2.Image())],
                ),
            ]
        },
        {
            "messages[1].parts[0].image": (
                "only a user message shows images; must hold a url or data"
            )
        },
        id="image-on-an-assistant-turn-without-a-source-names-both",
    ),
    pytest.param(
        {"messages": [_tool_turn("")]},
        {"messages[0].tool_call_id": "is required on a tool message"},
        id="tool-turn-without-id",
    ),
    pytest.param(
        {"messages": [_user(), _tool_turn("call_9")]},
        {"messages[1].tool_call_id": "answers no call of an earlier assistant message"},
        id="tool-turn-answering-nothing",
    ),
    pytest.param(
        {"messages": [_tool_turn("call_1"), _assistant_calling("call_1")]},
        {"messages[0].tool_call_id": "answers no call of an earlier assistant message"},
        id="tool-turn-before-its-call",
    ),
    pytest.param(
        {
            "messages": [
                _assistant_calling("call_1"),
                _tool_turn("call_1"),
                _tool_turn("call_1"),
            ]
        },
        {"messages[2].tool_call_id": "answers a call messages[1] answered already"},
        id="call-answered-twice",
    ),
    pytest.param(
        {"messages": [_user("hi", tool_call_id="call_1")]},
        {"messages[0].tool_call_id": "only a tool message answers a call"},
        id="tool-call-id-off-a-tool-turn",
    ),
    pytest.param(
        {"messages": [_user("hi", tool_calls=[_call()])]},
        {"messages[0].tool_calls": "only an assistant message carries tool calls"},
        id="tool-calls-off-an-assistant-turn",
    ),
    pytest.param(
        {"messages": [_assistant_calling("")]},
        {"messages[0].tool_calls[0].id": "is required"},
        id="call-without-id",
    ),
    pytest.param(
        {"messages": [_assistant_calling("c" * (MAX_TOOL_CALL_ID_CHARS + 1))]},
        {"messages[0].tool_calls[0].id": f"must be at most {MAX_TOOL_CALL_ID_CHARS} characters"},
        id="call-id-too-long",
    ),
    pytest.param(
        {"messages": [_assistant_calling("call_1"), _assistant_calling("call_1")]},
        {"messages[1].tool_calls[0].id": "repeats the id of a call in messages[0]"},
        id="call-id-repeated",
    ),
    pytest.param(
        {
            "messages": [
                Message(role=router_pb2.ROLE_ASSISTANT, tool_calls=[_call(name="read file")])
            ]
        },
        {
            "messages[0].tool_calls[0].name": (
                "must be 1 to 64 ASCII letters, digits, underscores or hyphens"
            )
        },
        id="call-name",
    ),
    pytest.param(
        {"messages": [_user("hi", reasoning=[router_pb2.ReasoningBlock(text="hm")])]},
        {"messages[0].reasoning": "only an assistant message carries reasoning"},
        id="reasoning-off-an-assistant-turn",
    ),
    pytest.param(
        {
            "messages": [
                Message(
                    role=router_pb2.ROLE_ASSISTANT,
                    content="ok",
                    reasoning=[
                        router_pb2.ReasoningBlock(signature="sig"),
                        router_pb2.ReasoningBlock(text="hm", redacted=b"\1"),
                    ],
                )
            ]
        },
        {
            "messages[0].reasoning[0]": "needs text or redacted",
            "messages[0].reasoning[1]": "holds text or redacted, not both",
        },
        id="reasoning-blocks",
    ),
    pytest.param(
        {
            "messages": [
                Message(
                    role=router_pb2.ROLE_ASSISTANT,
                    parts=[_image_part(url="https://example.com/a.png")],
                )
            ]
        },
        {"messages[0].parts[0].image": "only a user message shows images"},
        id="image-off-a-user-turn",
    ),
    pytest.param(
        {"messages": [_user("", parts=[_image_part()])]},
        {"messages[0].parts[0].image": "must hold a url or data"},
        id="image-without-source",
    ),
    pytest.param(
        {"messages": [_user("", parts=[_image_part(url="ftp://example.com/a.png")])]},
        {"messages[0].parts[0].image.url": "must be an http or https URL"},
        id="image-url-scheme",
    ),
    pytest.param(
        {"messages": [_user("", parts=[_image_part(url="data:image/png;base64,AAAA")])]},
        {"messages[0].parts[0].image.url": "an inline image goes in data, not in a data: URL"},
        id="image-data-url",
    ),
    pytest.param(
        {
            "messages": [
                _user(
                    "",
                    parts=[_image_part(url="https://e.com/" + "a" * MAX_IMAGE_URL_CHARS)],
                )
            ]
        },
        {"messages[0].parts[0].image.url": f"must be at most {MAX_IMAGE_URL_CHARS} characters"},
        id="image-url-too-long",
    ),
    pytest.param(
        {"messages": [_user("", parts=[_image_part(data=PNG)])]},
        {
            "messages[0].parts[0].image.media_type": (
                "is required with data: one of image/gif, image/jpeg, image/png, image/webp"
            )
        },
        id="image-data-without-media-type",
    ),
    pytest.param(
        {"messages": [_user("", parts=[_image_part(data=PNG, media_type="image/tiff")])]},
        {
            "messages[0].parts[0].image.media_type": (
                "must be one of image/gif, image/jpeg, image/png, image/webp"
            )
        },
        id="image-media-type",
    ),
    pytest.param(
        {"messages": [_user("", parts=[_image_part(data=b"", media_type="image/png")])]},
        {"messages[0].parts[0].image.data": "must not be empty"},
        id="image-data-empty",
    ),
    pytest.param(
        {"tools": [_tool("read file")]},
        {"tools[0].name": "must be 1 to 64 ASCII letters, digits, underscores or hyphens"},
        id="tool-name-characters",
    ),
    pytest.param(
        {"tools": [_tool("t" * 65)]},
        {"tools[0].name": "must be 1 to 64 ASCII letters, digits, underscores or hyphens"},
        id="tool-name-too-long",
    ),
    pytest.param(
        {"tools": [_tool("")]},
        {"tools[0].name": "must be 1 to 64 ASCII letters, digits, underscores or hyphens"},
        id="tool-name-empty",
    ),
    pytest.param(
        {"tools": [_tool(), _tool("other"), _tool()]},
        {"tools[2].name": "repeats the name of tools[0]"},
        id="tool-name-repeated",
    ),
    pytest.param(
        {"tools": [_tool(parameters="{'type': 'object'}")]},
        {"tools[0].parameters_json": "is not valid JSON"},
        id="tool-parameters-not-json",
    ),
    pytest.param(
        {"tools": [_tool(parameters='["type", "object"]')]},
        {"tools[0].parameters_json": "must be a JSON object"},
        id="tool-parameters-not-an-object",
    ),
    pytest.param(
        {"tools": [_tool(parameters='{"default": NaN}')]},
        {"tools[0].parameters_json": "is not valid JSON"},
        id="tool-parameters-nan",
    ),
    pytest.param(
        {"tools": [_tool(parameters='{"a": "' + "x" * MAX_JSON_CHARS + '"}')]},
        {
            "tools[0].parameters_json": (
                f"is {MAX_JSON_CHARS + 9} characters; at most {MAX_JSON_CHARS} are allowed"
            )
        },
        id="tool-parameters-too-long",
    ),
    pytest.param(
        {"tools": [_tool(f"t{index}") for index in range(MAX_TOOLS + 1)]},
        {"tools": f"has {MAX_TOOLS + 1} tools; at most {MAX_TOOLS} are allowed"},
        id="too-many-tools",
    ),
    pytest.param(
        {"tool_choice": router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_REQUIRED)},
        {"tool_choice.mode": "REQUIRED needs tools"},
        id="tool-choice-required-without-tools",
    ),
    pytest.param(
        {"tool_choice": router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_AUTO)},
        {"tool_choice.mode": "AUTO needs tools"},
        id="tool-choice-auto-without-tools",
    ),
    pytest.param(
        {"tool_choice": router_pb2.ToolChoice(mode=router_pb2.TOOL_CHOICE_MODE_NONE)},
        {"tool_choice.mode": "NONE needs tools"},
        id="tool-choice-none-without-tools",
    ),
    pytest.param(
        {"tool_choice": router_pb2.ToolChoice(tool_name="read_file")},
        {"tool_choice.tool_name": "must name one of the request's tools"},
        id="tool-choice-names-a-tool-without-tools",
    ),
    pytest.param(
        {
            "tools": [_tool(f"t{index}") for index in range(MAX_TOOLS + 1)],
            "tool_choice": router_pb2.ToolChoice(tool_name="t0"),
            "parallel_tool_calls": True,
        },
        {"tools": f"has {MAX_TOOLS + 1} tools; at most {MAX_TOOLS} are allowed"},
        id="too-many-tools-are-not-missing-tools",
    ),
    pytest.param(
        {"tools": [_tool()], "tool_choice": router_pb2.ToolChoice(tool_name="write_file")},
        {"tool_choice.tool_name": "must name one of the request's tools"},
        id="tool-choice-names-no-tool",
    ),
    pytest.param(
        {"tools": [_tool()], "tool_choice": router_pb2.ToolChoice(mode=9)},  # type: ignore[arg-type]
        {"tool_choice.mode": "is not a known mode"},
        id="tool-choice-unknown-mode",
    ),
    pytest.param(
        {"parallel_tool_calls": True},
        {"parallel_tool_calls": "needs tools"},
        id="parallel-tool-calls-without-tools",
    ),
    pytest.param(
        {
            "response_format": router_pb2.ResponseFormat(
                json_schema=router_pb2.JsonSchema(name="an answer", schema_json="{}")
            )
        },
        {
            "response_format.json_schema.name": (
                "must be 1 to 64 ASCII letters, digits, underscores or hyphens"
            )
        },
        id="schema-name",
    ),
    pytest.param(
        {"response_format": router_pb2.ResponseFormat(json_schema=router_pb2.JsonSchema())},
        {"response_format.json_schema.schema_json": "is required"},
        id="schema-missing",
    ),
    pytest.param(
        {
            "response_format": router_pb2.ResponseFormat(
                json_schema=router_pb2.JsonSchema(schema_json="true")
            )
        },
        {"response_format.json_schema.schema_json": "must be a JSON object"},
        id="schema-not-an-object",
    ),
    pytest.param(
        {"stop": ["s"] * (MAX_STOP_SEQUENCES + 1)},
        {"stop": f"has {MAX_STOP_SEQUENCES + 1} sequences; at most {MAX_STOP_SEQUENCES}"},
        id="too-many-stop-sequences",
    ),
    pytest.param(
        {"stop": ["END", "", "x" * (MAX_STOP_CHARS + 1)]},
        {
            "stop[1]": f"must be 1 to {MAX_STOP_CHARS} characters",
            "stop[2]": f"must be 1 to {MAX_STOP_CHARS} characters",
        },
        id="stop-sequence-lengths",
    ),
    pytest.param({"top_p": 1.5}, {"top_p": "must be between 0 and 1"}, id="top-p-over-one"),
    pytest.param({"top_p": float("nan")}, {"top_p": "must be between 0 and 1"}, id="top-p-nan"),
    pytest.param(
        {"reasoning": router_pb2.Reasoning()},
        {"reasoning": "set effort or budget_tokens"},
        id="reasoning-empty",
    ),
    pytest.param(
        {"reasoning": router_pb2.Reasoning(effort=7)},  # type: ignore[arg-type]
        {"reasoning.effort": "is not a known effort"},
        id="reasoning-unknown-effort",
    ),
    pytest.param(
        {"reasoning": router_pb2.Reasoning(budget_tokens=0)},
        {"reasoning.budget_tokens": "must be positive when set"},
        id="reasoning-budget-zero",
    ),
    pytest.param(
        {"reasoning": router_pb2.Reasoning(budget_tokens=1_000_001)},
        {"reasoning.budget_tokens": "is 1000001; exceeds server.max_output_tokens_limit (1000000)"},
        id="reasoning-budget-over-the-limit",
    ),
    pytest.param(
        {"max_output_tokens": 1000, "reasoning": router_pb2.Reasoning(budget_tokens=1000)},
        {
            "reasoning.budget_tokens": (
                "must be less than max_output_tokens (1000): reasoning is part of the output"
            )
        },
        id="reasoning-budget-not-under-the-output-cap",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), BAD_REQUESTS)
def test_each_rule_refuses_its_failing_example(
    fields: dict[str, Any], expected: dict[str, str]
) -> None:
    violations = _violations(_request(**fields))
    assert violations.keys() == expected.keys()
    for field, description in expected.items():
        # A JSON parser's own words follow the rule's.
        assert violations[field].startswith(description)


def test_images_over_the_count_limit_name_the_first_one_over() -> None:
    settings = ServerConfig(max_images=2)
    image = _image_part(url="https://example.com/a.png")
    route_call(_request(messages=[_user("", parts=[image, image])]), "", settings)
    two = _user("", parts=[image, image])
    assert _violations(_request(messages=[two, _user("", parts=[image])]), settings) == {
        "messages[1].parts[0].image": "is image 3 of the request; exceeds server.max_images (2)"
    }


def test_an_inline_image_at_the_size_limit_is_taken_and_one_byte_more_is_not() -> None:
    settings = ServerConfig(max_image_bytes=len(PNG))
    route_call(
        _request(messages=[_user("", parts=[_image_part(data=PNG, media_type="image/png")])]),
        "",
        settings,
    )
    over = _image_part(data=PNG + b"\0", media_type="image/png")
    assert _violations(_request(messages=[_user("", parts=[over])]), settings) == {
        "messages[0].parts[0].image.data": (
            f"is {len(PNG) + 1} bytes; exceeds server.max_image_bytes ({len(PNG)})"
        )
    }


def test_a_text_part_over_the_message_limit_names_the_setting() -> None:
    settings = ServerConfig(max_message_chars=4)
    route_call(
        _request(messages=[_user("", parts=[router_pb2.ContentPart(text="éééé")])]), "", settings
    )
    over = _user("", parts=[router_pb2.ContentPart(text="ééééé")])
    assert _violations(_request(messages=[over]), settings) == {
        "messages[0].parts[0].text": "is 5 characters; exceeds server.max_message_chars (4)"
    }


def test_boundaries_of_the_hard_limits_are_taken() -> None:
    route_call(
        _request(
            tools=[_tool(f"t{index}") for index in range(MAX_TOOLS)],
            stop=["x" * MAX_STOP_CHARS] * MAX_STOP_SEQUENCES,
            top_p=0.0,
            max_output_tokens=1001,
            reasoning=router_pb2.Reasoning(budget_tokens=1000),
        ),
        "",
        SETTINGS,
    )
    route_call(_request(top_p=1.0, tools=[_tool("t" * 64)]), "", SETTINGS)
    schema = '{"a": "' + "x" * (MAX_JSON_CHARS - 9) + '"}'
    route_call(_request(tools=[_tool(parameters=schema)]), "", SETTINGS)


def test_every_violation_of_the_extras_is_reported_with_the_plain_ones() -> None:
    request = router_pb2.RouteRequest(
        messages=[
            Message(role=router_pb2.ROLE_UNSPECIFIED, content="hi"),
            _tool_turn("call_9"),
        ],
        tools=[_tool("read file")],
        top_p=2.0,
    )
    assert _violations(request) == {
        "messages[0].role": "must be SYSTEM, USER, ASSISTANT or TOOL",
        "budget_key": "is required",
        "messages[1].tool_call_id": "answers no call of an earlier assistant message",
        "tools[0].name": "must be 1 to 64 ASCII letters, digits, underscores or hyphens",
        "top_p": "must be between 0 and 1",
    }


def test_tool_calls_count_as_content_and_a_tool_result_may_be_empty() -> None:
    messages = [_assistant_calling("call_1"), _tool_turn("call_1", content="")]
    route_call(_request(messages=messages), "", SETTINGS)


def test_a_request_whose_only_message_is_an_empty_tool_result_is_empty() -> None:
    violations = _violations(_request(messages=[_tool_turn("call_1", content="")]))
    assert violations["messages"] == "every message is empty; at least one needs content"


@pytest.mark.parametrize(
    ("calls", "turns"), [(50_000, 1), (MAX_TOOL_CALLS, 400)], ids=["one-turn", "many-turns"]
)
def test_a_flood_of_empty_calls_is_refused_with_a_bounded_bad_request(
    calls: int, turns: int
) -> None:
    """A 100 KB request of empty tool calls breaks the rules tens of thousands
    of times; its refusal names the first of them and counts the rest."""
    turn = Message(role=router_pb2.ROLE_USER, tool_calls=[router_pb2.ToolCall()] * calls)
    request = _request(messages=[turn] * turns)
    assert request.ByteSize() > 100_000
    violations = _violations(request)
    assert len(violations) <= MAX_SHOWN_VIOLATIONS + 1
    if turns > 1:
        assert violations[MORE_VIOLATIONS_FIELD].startswith("and at least ")
    details = dict(rich_status(InvalidRequest(violations)).trailers)["grpc-status-details-bin"]
    assert isinstance(details, bytes)
    status = status_pb2.Status.FromString(details)
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details)
    assert len(bad.field_violations) == len(violations)


def test_an_invalid_request_shows_the_first_violations_and_counts_the_rest() -> None:
    violations = {f"f{n}": "bad" for n in range(MAX_SHOWN_VIOLATIONS + 10)}
    error = InvalidRequest(violations)
    assert list(error.violations) == [
        *list(violations)[:MAX_SHOWN_VIOLATIONS],
        MORE_VIOLATIONS_FIELD,
    ]
    assert error.violations[MORE_VIOLATIONS_FIELD] == "and at least 10 more violations"
    assert len(error.details.field_violations) == MAX_SHOWN_VIOLATIONS + 1
    assert f"f{MAX_SHOWN_VIOLATIONS}" not in error.metadata["fields"]


def _with_unknown_field(message: Any, number: int) -> bytes:
    """`message` serialized with a varint field `number` its type does not know."""
    tag = number << 3
    varint = bytearray()
    while tag >= 0x80:
        varint.append(tag & 0x7F | 0x80)
        tag >>= 7
    varint.append(tag)
    return bytes(message.SerializeToString() + varint + b"\x01")


def test_fields_a_newer_client_set_are_refused_naming_the_message_holding_them() -> None:
    """Served without them, the request would not be the one its sender sent."""
    request = _request(tools=[_tool()])
    request.messages[0].MergeFromString(_with_unknown_field(_user(), 111))
    request.tools[0].MergeFromString(_with_unknown_field(_tool(), 9))
    request.MergeFromString(_with_unknown_field(router_pb2.RouteRequest(), 999))
    request.MergeFromString(_with_unknown_field(router_pb2.RouteRequest(), 100))
    description = (
        "holds fields this server does not know (numbers {}); it would be served without them"
    )
    assert _violations(request) == {
        "request": description.format("100, 999"),
        "messages[0]": description.format(111),
        "tools[0]": description.format(9),
    }


def test_a_field_a_newer_client_set_deep_inside_one_tool_alone_is_found() -> None:
    request = _request(tools=[_tool(), _tool("second")])
    request.tools[1].MergeFromString(_with_unknown_field(_tool("second"), 7))

    assert _violations(request) == {
        "tools[1]": "holds fields this server does not know (numbers 7);"
        " it would be served without them"
    }
