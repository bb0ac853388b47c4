"""The client's keywords are the contract's request fields: every one of them,
the enums by the names their values end in, None for one not passed."""

from __future__ import annotations

import typing
import uuid

import pytest
from faregate.v1 import router_pb2
from faregate_client import RouteOptions
from faregate_client.__main__ import build_parser
from faregate_client._request import (
    Capability,
    Fallback,
    Preference,
    Task,
    build_request,
    enum_name,
    enum_names,
)
from google.protobuf.descriptor import EnumDescriptor

_GIVEN_APART = {"messages", "budget_key"}
"""The request fields the clients take as arguments of their own."""


@pytest.mark.parametrize("kind", [router_pb2.RouteRequest, router_pb2.StreamRouteRequest])
def test_the_options_are_every_request_field_but_messages_and_budget_key(
    kind: type[router_pb2.RouteRequest] | type[router_pb2.StreamRouteRequest],
) -> None:
    fields = {field.name for field in kind.DESCRIPTOR.fields}

    assert set(RouteOptions.__optional_keys__) == fields - _GIVEN_APART
    assert fields >= _GIVEN_APART


def test_the_command_line_has_a_flag_for_every_option() -> None:
    destinations = {action.dest for action in build_parser()._actions}

    assert set(RouteOptions.__optional_keys__) <= destinations


@pytest.mark.parametrize(
    ("names", "enum"),
    [
        (Preference, router_pb2.Preference.DESCRIPTOR),
        (Task, router_pb2.Task.DESCRIPTOR),
        (Capability, router_pb2.Capability.DESCRIPTOR),
        (Fallback, router_pb2.FallbackPolicy.DESCRIPTOR),
    ],
)
def test_each_enum_keyword_names_every_value_but_unspecified(
    names: object, enum: EnumDescriptor
) -> None:
    assert typing.get_args(names) == enum_names(enum)


def test_enums_go_by_name_and_none_means_not_passed() -> None:
    request = build_request(
        router_pb2.RouteRequest,
        "hi",
        "team",
        {
            "prefer": "cost",
            "task": "unit_test",
            "fallback": "none",
            "required_capabilities": ["tools", "json_mode"],
            "min_quality": None,
            "max_output_tokens": None,
            "temperature": 0.0,
        },
        generate_request_id=False,
    )

    assert request.prefer == router_pb2.PREFERENCE_COST
    assert request.task == router_pb2.TASK_UNIT_TEST
    assert request.fallback == router_pb2.FALLBACK_POLICY_NONE
    assert list(request.required_capabilities) == [
        router_pb2.CAPABILITY_TOOLS,
        router_pb2.CAPABILITY_JSON_MODE,
    ]
    assert not request.HasField("min_quality")
    assert not request.HasField("max_output_tokens")
    assert request.HasField("temperature")
    assert request.request_id == ""


def test_a_keyword_that_is_no_field_is_a_type_error() -> None:
    options: typing.Any = {"prefr": "cost"}

    with pytest.raises(TypeError, match="prefr"):
        build_request(router_pb2.RouteRequest, "hi", "team", options, generate_request_id=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prefer": "cheap"}, "prefer must be one of cost, latency, quality, not 'cheap'"),
        ({"task": "unspecified"}, "task must be one of boilerplate,"),
        ({"required_capabilities": ["tools", "telepathy"]}, "required_capabilities must be"),
        ({"fallback": router_pb2.FALLBACK_POLICY_NONE}, "fallback must be one of same_route"),
    ],
)
def test_an_enum_keyword_naming_no_value_is_a_value_error(
    options: typing.Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_request(router_pb2.RouteRequest, "hi", "team", options, generate_request_id=False)


def test_generated_request_ids_are_fresh_uuid4s_unless_one_is_passed() -> None:
    def request_id(options: RouteOptions) -> str:
        request = build_request(
            router_pb2.StreamRouteRequest, "hi", "team", options, generate_request_id=True
        )
        return request.request_id

    first, second = request_id({}), request_id({"request_id": None})

    assert first != second
    assert uuid.UUID(first).version == uuid.UUID(second).version == 4
    assert request_id({"request_id": "job-7"}) == "job-7"
    assert request_id({"request_id": ""}) == ""


def test_a_conversation_keeps_its_order_roles_and_messages_given_whole() -> None:
    whole = router_pb2.Message(role=router_pb2.ROLE_ASSISTANT, content="4")
    request = build_request(
        router_pb2.RouteRequest,
        [("system", "Be brief."), ("user", "2+2?"), whole, ("user", "And 3+3?"), ("robot", "x")],
        "team",
        {},
        generate_request_id=False,
    )

    assert [(message.role, message.content) for message in request.messages] == [
        (router_pb2.ROLE_SYSTEM, "Be brief."),
        (router_pb2.ROLE_USER, "2+2?"),
        (router_pb2.ROLE_ASSISTANT, "4"),
        (router_pb2.ROLE_USER, "And 3+3?"),
        (router_pb2.ROLE_UNSPECIFIED, "x"),  # faregate refuses it, naming the message
    ]


def test_a_value_prints_by_its_keyword_name() -> None:
    finish = router_pb2.FinishReason.DESCRIPTOR

    assert enum_name(finish, router_pb2.FINISH_REASON_TOOL_CALLS) == "tool_calls"
    assert enum_name(finish, router_pb2.FINISH_REASON_UNSPECIFIED) == "unspecified"
    assert enum_name(finish, 99) == "99"
