"""rpc/translate.py without a server: request messages in, RouteCalls or
InvalidRequests naming every violation out, each limit at its boundary."""

from __future__ import annotations

import math
from typing import Any

import pytest
from faregate.v1 import router_pb2
from faregate_server.config.schema import ServerConfig
from faregate_server.domain import (
    Capability,
    ChatMessage,
    Preference,
    Role,
    RoutingHints,
    TaskKind,
)
from faregate_server.errors import InvalidRequest
from faregate_server.rpc.translate import (
    MAX_ADDITIONAL_BUDGETS,
    MAX_NAME_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_TEMPERATURE,
    SHOWN_KEY_CHARS,
    AnyRouteRequest,
    route_call,
)

SETTINGS = ServerConfig()


def _request(**fields: Any) -> router_pb2.RouteRequest:
    """A valid request, with fields set or replaced."""
    defaults: dict[str, Any] = {
        "messages": [router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")],
        "budget_key": "team",
    }
    return router_pb2.RouteRequest(**(defaults | fields))


def _violations(request: AnyRouteRequest, settings: ServerConfig = SETTINGS) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as refused:
        route_call(request, "alice", settings)
    return refused.value.violations


def test_a_valid_request_becomes_its_route_call() -> None:
    request = _request(
        model="fast",
        messages=[
            router_pb2.Message(role=router_pb2.ROLE_SYSTEM, content="be brief"),
            router_pb2.Message(role=router_pb2.ROLE_USER, content="hi"),
            router_pb2.Message(role=router_pb2.ROLE_ASSISTANT, content=""),
        ],
        agent="coder",
        max_output_tokens=50,
        temperature=0.5,
        metadata={"ticket": "42"},
        additional_budget_keys=["org"],
    )
    call = route_call(request, "alice", SETTINGS)
    assert call.model == "fast"
    assert call.messages == (
        ChatMessage(Role.SYSTEM, "be brief"),
        ChatMessage(Role.USER, "hi"),
        ChatMessage(Role.ASSISTANT, ""),
    )
    assert call.agent == "coder"
    assert call.budget_key == "team"
    assert call.additional_budget_keys == ("org",)
    assert call.max_output_tokens == 50
    assert call.temperature == 0.5
    assert call.metadata == {"ticket": "42"}
    assert call.principal == "alice"
    assert call.hints == RoutingHints()
    assert call.request_id == ""
    assert call.fingerprint == ""


def test_unset_optional_fields_stay_unset() -> None:
    call = route_call(_request(), "", SETTINGS)
    assert call.max_output_tokens is None
    assert call.temperature is None
    assert call.metadata == {}
    assert call.additional_budget_keys == ()


def test_routing_hints_are_read_into_the_domain() -> None:
    request = _request(
        prefer=router_pb2.PREFERENCE_QUALITY,
        min_quality=0.7,
        max_cost_nano_usd=1000,
        min_context_tokens=4096,
        required_capabilities=[router_pb2.CAPABILITY_TOOLS, router_pb2.CAPABILITY_JSON_MODE],
        task=router_pb2.TASK_REFACTOR,
        fallback=router_pb2.FALLBACK_POLICY_NONE,
        explain=True,
    )
    assert route_call(request, "", SETTINGS).hints == RoutingHints(
        prefer=Preference.QUALITY,
        min_quality=0.7,
        max_cost_nano_usd=1000,
        capabilities=frozenset({Capability.TOOLS, Capability.JSON_MODE}),
        min_context_tokens=4096,
        task=TaskKind.REFACTOR,
        fallback=False,
        explain=True,
    )


def test_an_explicit_same_route_fallback_keeps_fallback_on() -> None:
    request = _request(fallback=router_pb2.FALLBACK_POLICY_SAME_ROUTE)
    assert route_call(request, "", SETTINGS).hints.fallback


def test_every_violation_is_reported_at_once() -> None:
    request = router_pb2.RouteRequest(
        messages=[router_pb2.Message(role=router_pb2.ROLE_UNSPECIFIED, content="hi")],
        model="m" * (MAX_NAME_CHARS + 1),
        max_output_tokens=0,
        temperature=math.nan,
        min_quality=1.5,
        max_cost_nano_usd=-1,
        min_context_tokens=0,
        prefer=99,  # type: ignore[arg-type]  # an enum number no version defines
        required_capabilities=[router_pb2.CAPABILITY_VISION, 99],  # type: ignore[list-item]
        task=99,  # type: ignore[arg-type]
        fallback=99,  # type: ignore[arg-type]
        additional_budget_keys=["", "org"],
        request_id="r" * (MAX_REQUEST_ID_CHARS + 1),
    )
    with pytest.raises(InvalidRequest) as refused:
        route_call(request, "", SETTINGS)
    assert refused.value.violations == {
        "messages[0].role": "must be SYSTEM, USER, ASSISTANT or TOOL",
        "budget_key": "is required",
        "model": f"must be at most {MAX_NAME_CHARS} characters",
        "additional_budget_keys": (
            f"must be at most {MAX_ADDITIONAL_BUDGETS} non-empty keys,"
            " none repeated or equal to budget_key"
        ),
        "request_id": f"must be at most {MAX_REQUEST_ID_CHARS} characters",
        "max_output_tokens": "must be positive when set",
        "temperature": f"must be between 0 and {MAX_TEMPERATURE}",
        "min_quality": "must be between 0 and 1",
        "max_cost_nano_usd": "must not be negative",
        "min_context_tokens": "must be positive when set",
        "prefer": "is not a known preference",
        "required_capabilities[1]": "is not a known capability",
        "task": "is not a known task",
        "fallback": "is not a known fallback policy",
    }
    # The message lists the fields in the order they were found.
    assert refused.value.message == "invalid request: " + ", ".join(refused.value.violations)
    assert refused.value.metadata == {"fields": ", ".join(refused.value.violations)}


def test_a_request_without_messages_is_refused() -> None:
    assert _violations(_request(messages=[])) == {"messages": "at least one message is required"}


def test_a_request_whose_every_message_is_empty_is_refused() -> None:
    empty = [router_pb2.Message(role=router_pb2.ROLE_USER, content="")] * 2
    assert _violations(_request(messages=empty)) == {
        "messages": "every message is empty; at least one needs content"
    }


def test_too_many_messages_all_empty_reports_both_violations() -> None:
    empty = [router_pb2.Message(role=router_pb2.ROLE_USER, content="")] * 3
    assert _violations(_request(messages=empty), ServerConfig(max_messages=2)) == {
        "messages": "has 3 messages; exceeds server.max_messages (2);"
        " every message is empty; at least one needs content"
    }


@pytest.mark.parametrize(
    ("additional", "valid"),
    [
        ([], True),
        ([f"b{index}" for index in range(MAX_ADDITIONAL_BUDGETS)], True),
        ([f"b{index}" for index in range(MAX_ADDITIONAL_BUDGETS + 1)], False),
        (["org", "org"], False),
        (["team"], False),  # the same as budget_key
        ([""], False),
    ],
)
def test_additional_budgets_are_few_distinct_and_named(additional: list[str], valid: bool) -> None:
    request = _request(additional_budget_keys=additional)
    if valid:
        assert route_call(request, "", SETTINGS).additional_budget_keys == tuple(additional)
    else:
        assert list(_violations(request)) == ["additional_budget_keys"]


# Each configured limit, at the boundary: the limit itself is served, one more is refused
# with a violation naming the setting.


def test_max_messages_at_the_boundary() -> None:
    settings = ServerConfig(max_messages=2)
    message = router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")
    route_call(_request(messages=[message] * 2), "", settings)
    assert _violations(_request(messages=[message] * 3), settings) == {
        "messages": "has 3 messages; exceeds server.max_messages (2)"
    }


def test_max_message_chars_at_the_boundary_counts_characters() -> None:
    settings = ServerConfig(max_message_chars=4)
    route_call(
        _request(messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="éééé")]),
        "",
        settings,
    )
    over = [
        router_pb2.Message(role=router_pb2.ROLE_USER, content="ok"),
        router_pb2.Message(role=router_pb2.ROLE_USER, content="ééééé"),
    ]
    assert _violations(_request(messages=over), settings) == {
        "messages[1].content": "is 5 characters; exceeds server.max_message_chars (4)"
    }


def test_max_request_bytes_at_the_boundary() -> None:
    request = _request()
    route_call(request, "", ServerConfig(max_request_bytes=request.ByteSize()))
    limit = request.ByteSize() - 1
    assert _violations(request, ServerConfig(max_request_bytes=limit)) == {
        "request": f"is {request.ByteSize()} bytes; exceeds server.max_request_bytes ({limit})"
    }


def test_max_output_tokens_limit_at_the_boundary() -> None:
    settings = ServerConfig(max_output_tokens_limit=100)
    assert route_call(_request(max_output_tokens=100), "", settings).max_output_tokens == 100
    assert _violations(_request(max_output_tokens=101), settings) == {
        "max_output_tokens": "is 101; exceeds server.max_output_tokens_limit (100)"
    }


def test_max_metadata_entries_at_the_boundary() -> None:
    settings = ServerConfig(max_metadata_entries=2)
    route_call(_request(metadata={"a": "1", "b": "2"}), "", settings)
    assert _violations(_request(metadata={"a": "1", "b": "2", "c": "3"}), settings) == {
        "metadata": "has 3 entries; exceeds server.max_metadata_entries (2)"
    }


def test_metadata_key_and_value_lengths_at_the_boundary() -> None:
    settings = ServerConfig(max_metadata_key_chars=40, max_metadata_value_chars=3)
    long_key = "k" * 41
    route_call(_request(metadata={"k" * 40: "abc"}), "", settings)
    violations = _violations(_request(metadata={long_key: "", "short": "abcd"}), settings)
    assert violations == {
        # An over-long key is named cut short: it is the thing that is too long.
        f"metadata[{long_key[:SHOWN_KEY_CHARS]!r}]": (
            "key is 41 characters; exceeds server.max_metadata_key_chars (40)"
        ),
        "metadata['short']": "value is 4 characters; exceeds server.max_metadata_value_chars (3)",
    }


# The hard limits, at the boundary.


@pytest.mark.parametrize("field", ["model", "agent", "budget_key"])
def test_names_at_the_boundary(field: str) -> None:
    route_call(_request(**{field: "n" * MAX_NAME_CHARS}), "", SETTINGS)
    assert _violations(_request(**{field: "n" * (MAX_NAME_CHARS + 1)})) == {
        field: f"must be at most {MAX_NAME_CHARS} characters"
    }


def test_an_additional_budget_name_at_the_boundary() -> None:
    route_call(_request(additional_budget_keys=["n" * MAX_NAME_CHARS]), "", SETTINGS)
    assert _violations(_request(additional_budget_keys=["ok", "n" * (MAX_NAME_CHARS + 1)])) == {
        "additional_budget_keys[1]": f"must be at most {MAX_NAME_CHARS} characters"
    }


def test_request_id_at_the_boundary() -> None:
    route_call(_request(request_id="r" * MAX_REQUEST_ID_CHARS), "", SETTINGS)
    assert list(_violations(_request(request_id="r" * (MAX_REQUEST_ID_CHARS + 1)))) == [
        "request_id"
    ]


@pytest.mark.parametrize(
    ("temperature", "valid"),
    [(0.0, True), (MAX_TEMPERATURE, True), (-0.01, False), (2.01, False), (math.inf, False)],
)
def test_temperature_range(temperature: float, valid: bool) -> None:
    request = _request(temperature=temperature)
    if valid:
        assert route_call(request, "", SETTINGS).temperature == temperature
    else:
        assert list(_violations(request)) == ["temperature"]


@pytest.mark.parametrize(
    ("min_quality", "valid"), [(0.0, True), (1.0, True), (-0.1, False), (math.nan, False)]
)
def test_min_quality_range(min_quality: float, valid: bool) -> None:
    request = _request(min_quality=min_quality)
    if valid:
        assert route_call(request, "", SETTINGS).hints.min_quality == min_quality
    else:
        assert list(_violations(request)) == ["min_quality"]


def test_zero_valued_hints_are_valid() -> None:
    hints = route_call(_request(max_cost_nano_usd=0, min_context_tokens=1), "", SETTINGS).hints
    assert (hints.max_cost_nano_usd, hints.min_context_tokens) == (0, 1)


# The fingerprint that tells a reused request id from a retry.


def test_a_request_without_an_id_has_no_fingerprint() -> None:
    assert route_call(_request(), "alice", SETTINGS).fingerprint == ""


def test_the_fingerprint_leaves_the_id_out_and_the_request_as_it_was() -> None:
    first = _request(request_id="one")
    call = route_call(first, "alice", SETTINGS)
    assert call.request_id == "one"
    assert first.request_id == "one"
    assert call.fingerprint == route_call(_request(request_id="two"), "alice", SETTINGS).fingerprint


def test_the_fingerprint_tells_the_principal_the_rpc_and_the_content_apart() -> None:
    base = route_call(_request(request_id="r"), "alice", SETTINGS).fingerprint
    assert route_call(_request(request_id="r"), "bob", SETTINGS).fingerprint != base
    streamed = router_pb2.StreamRouteRequest(
        messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")],
        budget_key="team",
        request_id="r",
    )
    assert route_call(streamed, "alice", SETTINGS).fingerprint != base
    other = _request(
        request_id="r", messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="ho")]
    )
    assert route_call(other, "alice", SETTINGS).fingerprint != base


def test_a_stream_request_is_read_like_a_route_request() -> None:
    streamed = router_pb2.StreamRouteRequest(
        messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")],
        budget_key="team",
        task=router_pb2.TASK_DEBUG,
    )
    call = route_call(streamed, "alice", SETTINGS)
    assert call.messages == (ChatMessage(Role.USER, "hi"),)
    assert call.hints.task is TaskKind.DEBUG
