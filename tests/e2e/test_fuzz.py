"""Fuzzing both RPCs of a running faregate with hypothesis.

Three properties, each on one server shared by all its examples:
- arbitrary field values (unicode, empty and huge strings, int32/int64 edges,
  unknown enum numbers, NaN and infinities, repeated fields, maps) in
  RouteRequest and StreamRouteRequest;
- arbitrary bytes as the request body, random or a valid request mangled;
- with auth on, arbitrary field values under any credential: none, garbage,
  a forged secret for a real key id, or the one valid key (whose principal
  may use the team budget and the default route only).
After every input: the status is one faregate documents (the codes of
errors.py's catalogue, each with an ErrorInfo of the catalogue, or the
transport's RESOURCE_EXHAUSTED for a body over the receive limit) and
nothing stays reserved. After all of them the server still answers a
health check and a valid request.

Seed policy: `derandomize=True` derives the examples from the test itself,
so every run (CI included) tries the same inputs and a failure reproduces
exactly; widening the search is a matter of raising `max_examples` locally.
Each example counts itself; the totals are printed and recorded as
`fuzz_inputs` in the test report.

The async properties run on pytest-asyncio's event loop (it drives each
hypothesis example there), the same loop as the server and the fake upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2
from faregate_server.errors import ERROR_DOMAIN, FaregateError
from faregate_server.security.api_keys import format_key_hash, new_api_key
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import Faregate, StartFaregate, to_config
from tests.support.health import serving_status

ROUTE = "/faregate.v1.RouterService/Route"
STREAM = "/faregate.v1.RouterService/StreamRoute"
EXAMPLES = 120
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # One server serves every example on purpose: state must survive them all.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _catalogue() -> tuple[set[grpc.StatusCode], set[str]]:
    """The status codes and ErrorInfo reasons faregate returns on purpose
    (errors.py); INTERNAL, a bug, is not among them."""
    classes: list[type[FaregateError]] = [FaregateError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    documented = [cls for cls in classes if cls.reason != "INTERNAL"]
    codes = {grpc.StatusCode[cls.code.name] for cls in documented}
    return codes, {cls.reason for cls in documented}


CODES, REASONS = _catalogue()
INT32 = st.one_of(
    st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1)
)
INT64 = st.one_of(st.sampled_from([0, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
DOUBLE = st.floats(allow_nan=True, allow_infinity=True)
SHORT = st.text(max_size=40)
LONG = st.builds(
    lambda char, count: char * count, st.characters(codec="utf-8"), st.integers(100, 5000)
)
TEXT = st.one_of(SHORT, st.just(""), LONG)


def _huge(content: str) -> dict[str, Any]:
    """One user message of the given content; for the explicit examples past the limits."""
    return {
        "budget_key": "team",
        "messages": [router_pb2.Message(role=router_pb2.ROLE_USER, content=content)],
    }


@st.composite
def _mostly(
    draw: st.DrawFn, valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]
) -> Any:
    """A value a client would send, or (one time in eight) anything the field
    can hold: most requests then get past validation into routing and billing."""
    return draw(anything if draw(st.integers(0, 7)) == 7 else valid)


def _enum(values: list[int]) -> st.SearchStrategy[int]:
    return _mostly(st.sampled_from(values), INT32)


MESSAGE = st.builds(
    router_pb2.Message,
    role=_enum([1, 2, 3]).map(router_pb2.Role.ValueType),
    content=_mostly(SHORT, TEXT),
)
MESSAGES = _mostly(st.lists(MESSAGE, min_size=1, max_size=6), st.lists(MESSAGE, max_size=6))
NAMES = _mostly(st.sampled_from(["team", "gpt-fake", "default", ""]), SHORT)


@st.composite
def route_requests(draw: st.DrawFn) -> dict[str, Any]:
    """The fields of a RouteRequest / StreamRouteRequest, any value each can hold."""
    fields: dict[str, Any] = {
        "model": draw(_mostly(st.sampled_from(["", "gpt-fake", "claude-fake", "default"]), TEXT)),
        "messages": draw(MESSAGES),
        "agent": draw(SHORT),
        "budget_key": draw(_mostly(st.just("team"), NAMES)),
        "metadata": draw(st.dictionaries(SHORT, _mostly(SHORT, TEXT), max_size=4)),
        "prefer": draw(_enum([0, 1, 2, 3])),
        "required_capabilities": draw(_mostly(st.just([]), st.lists(_enum([1, 2, 3]), max_size=3))),
        "task": draw(_enum(list(range(11)))),
        "fallback": draw(_enum([0, 1, 2])),
        "explain": draw(st.booleans()),
        "additional_budget_keys": draw(_mostly(st.just([]), st.lists(NAMES, max_size=3))),
        "request_id": draw(_mostly(st.one_of(st.just(""), st.uuids().map(str)), TEXT)),
    }
    optional = {
        "max_output_tokens": _mostly(st.integers(1, 100), INT32),
        "temperature": _mostly(st.floats(0, 2), DOUBLE),
        "min_quality": _mostly(st.floats(0, 0.9), DOUBLE),
        "max_cost_nano_usd": _mostly(st.integers(10**7, 10**9), INT64),
        "min_context_tokens": _mostly(st.integers(1, 8000), INT64),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            fields[name] = draw(values)
    return fields


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid request truncated or with bytes overwritten."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    valid = router_pb2.RouteRequest(
        model="gpt-fake",
        budget_key="team",
        messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hello there")],
        metadata={"k": "v"},
        max_output_tokens=16,
    ).SerializeToString()
    body = bytearray(valid[: draw(st.integers(0, len(valid)))])
    for _ in range(draw(st.integers(0, 4))):
        if body:
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return bytes(body)


class Tally:
    """Counts the inputs sent and the statuses they got."""

    def __init__(self) -> None:
        self.inputs = 0
        self.codes: dict[str, int] = {}

    def add(self, outcome: str) -> None:
        self.inputs += 1
        self.codes[outcome] = self.codes.get(outcome, 0) + 1


@pytest.fixture
async def fuzzed(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    config_data["server"]["default_deadline_s"] = 10
    async with start_faregate(to_config(config_data)) as faregate:
        yield faregate
        # However the examples went, the server is alive and serving.
        channel = faregate.client._channel
        assert await serving_status(channel) == health_pb2.HealthCheckResponse.SERVING
        reply = await faregate.client.route("still serving?", budget_key="team")
        assert reply.output
        assert await faregate.reserved_nano_usd() == 0


def _check_status(error: grpc.aio.AioRpcError) -> str:
    """Checks the status is a documented one; returns "CODE REASON"."""
    code = error.code()
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if details is None:
        # Only gRPC's own refusal of a body over the receive limit has none.
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, error.details())
        assert "larger than max" in (error.details() or ""), error.details()
        return f"{code.name} (transport)"
    assert code in CODES, (code, error.details())
    assert isinstance(details, bytes)
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == ERROR_DOMAIN
    assert info.reason in REASONS, error.details()
    return f"{code.name} {info.reason}"


def _identity(data: bytes) -> bytes:
    """Bytes go on the wire as they are: the body is sent raw."""
    return data


async def _send(
    faregate: Faregate,
    path: str,
    body: bytes,
    tally: Tally,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    channel = faregate.client._channel
    try:
        if path == ROUTE:
            await channel.unary_unary(path, _identity, _identity)(
                body, timeout=10, metadata=metadata
            )
        else:
            call = channel.unary_stream(path, _identity, _identity)
            async for _ in call(body, timeout=10, metadata=metadata):
                pass
        tally.add("OK")
    except grpc.aio.AioRpcError as error:
        tally.add(_check_status(error))
    assert await faregate.reserved_nano_usd() == 0


@pytest.fixture
def tally(record_property: Any, request: pytest.FixtureRequest) -> Iterator[Tally]:
    """Counts one fuzz test's inputs across all its examples, then reports them."""
    counted = Tally()
    yield counted
    name = f"fuzz_inputs[{request.node.name}]"
    print(f"{name}: {counted.inputs} inputs, statuses {dict(sorted(counted.codes.items()))}")
    record_property("fuzz_inputs", counted.inputs)


# Huge fields are costly to send, so they are explicit examples (run on top
# of the generated ones) rather than drawn over and over.
@FUZZ
@given(fields=route_requests())
@example(fields=_huge("a" * 524_288))  # exactly server.max_message_chars: served
@example(fields=_huge("a" * 524_289))  # one character over it
@example(fields=_huge("é" * 524_288))  # within the characters, over max_request_bytes
@example(fields=_huge("😀" * 300_000))  # over gRPC's receive limit (RESOURCE_EXHAUSTED)
@example(fields={**_huge("hi"), "metadata": {"k": "v" * 100_000}})
async def test_any_field_values_get_a_documented_status(
    fuzzed: Faregate, tally: Tally, fields: dict[str, Any]
) -> None:
    for message_type, path in (
        (router_pb2.RouteRequest, ROUTE),
        (router_pb2.StreamRouteRequest, STREAM),
    ):
        body = message_type(**fields).SerializeToString()
        await _send(fuzzed, path, body, tally)


@FUZZ
@given(body=raw_bodies())
async def test_any_bytes_get_a_documented_status(
    fuzzed: Faregate, tally: Tally, body: bytes
) -> None:
    await _send(fuzzed, ROUTE, body, tally)
    await _send(fuzzed, STREAM, body, tally)


KEY, KEY_HASH = new_api_key()
_FORGED = KEY.rsplit("_", 1)[0] + "_" + "A" * 43  # the right key id, the wrong secret
PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
AUTHORIZATIONS = st.one_of(
    st.just(f"Bearer {KEY}"),
    st.sampled_from(["", "Bearer", "Bearer ", f"Bearer {_FORGED}", f"bearer {KEY}", KEY]),
    PRINTABLE,
    PRINTABLE.map(lambda text: f"Bearer fg_{text}"),
    st.none(),
)


@pytest.fixture
async def guarded(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    """faregate with auth on: one principal, granted the team budget and the
    default route only, two requests at a time."""
    config_data["server"]["default_deadline_s"] = 10
    config_data["auth"] = {
        "principals": {
            "agent": {
                "api_keys": [format_key_hash(KEY_HASH)],
                "budgets": ["team"],
                "routes": ["default"],
                "max_concurrent": 2,
            }
        }
    }
    async with start_faregate(to_config(config_data)) as faregate:
        yield faregate
        channel = faregate.client._channel
        assert await serving_status(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await faregate.reserved_nano_usd() == 0


@FUZZ
@given(fields=route_requests(), authorization=AUTHORIZATIONS)
async def test_any_credential_with_any_request_gets_a_documented_status(
    guarded: Faregate, tally: Tally, fields: dict[str, Any], authorization: str | None
) -> None:
    metadata = () if authorization is None else (("authorization", authorization),)
    for message_type, path in (
        (router_pb2.RouteRequest, ROUTE),
        (router_pb2.StreamRouteRequest, STREAM),
    ):
        body = message_type(**fields).SerializeToString()
        await _send(guarded, path, body, tally, metadata)
