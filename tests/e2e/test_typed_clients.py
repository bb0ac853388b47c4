"""The typed clients against the real server: FaregateClient and the blocking
SyncFaregateClient send every field of the request (the routing hints, agent,
metadata, request id, further budgets, a whole conversation) and raise the
same typed errors.

The blocking client runs in a thread of its own (asyncio.to_thread), as it
would in a program: the test's event loop serves faregate and the fake
upstream meanwhile.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from faregate.v1 import router_pb2
from faregate_client import (
    BudgetExhausted,
    ClientTls,
    FailedPrecondition,
    FaregateClient,
    FaregateError,
    InvalidArgument,
    NotFound,
    SyncFaregateClient,
    Unavailable,
)
from faregate_server.domain import ChatMessage, Role
from faregate_server.upstream.tokens import TiktokenCounter

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.certs import write_pki
from tests.support.eventually import eventually

Route = Callable[..., Awaitable[router_pb2.RouteResponse]]


def _in_a_thread(client: SyncFaregateClient) -> Route:
    def route(*args: Any, **kwargs: Any) -> Awaitable[router_pb2.RouteResponse]:
        return asyncio.to_thread(client.route, *args, **kwargs)

    return route


@pytest.fixture(params=["async", "sync"])
async def route(request: pytest.FixtureRequest, faregate: Faregate) -> AsyncIterator[Route]:
    """`route(...)` of FaregateClient, or of SyncFaregateClient in a thread."""
    if request.param == "async":
        yield faregate.client.route
        return
    with SyncFaregateClient(faregate.target) as client:
        yield _in_a_thread(client)


async def test_the_routing_hints_reach_the_router(route: Route) -> None:
    balanced = await route("hi", budget_key="team")
    cheapest = await route("hi", budget_key="team", prefer="cost")
    good_enough = await route("hi", budget_key="team", prefer="cost", min_quality=0.5)
    explained = await route("hi", budget_key="team", task="review", explain=True)

    assert balanced.model_used == "gpt-fake"
    assert cheapest.model_used == "cheap-fake"
    assert good_enough.model_used == "gpt-fake"  # cheap-fake's quality is 0.2
    assert explained.task == router_pb2.TASK_REVIEW
    assert {candidate.model for candidate in explained.candidates} == {"gpt-fake", "cheap-fake"}
    assert balanced.candidates == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"min_quality": 0.99}, "min_quality"),
        ({"max_cost_nano_usd": 10}, "max_cost_nano_usd"),
        ({"required_capabilities": ["vision"]}, "required_capabilities"),
        ({"min_context_tokens": 1_000_000}, "min_context_tokens"),
    ],
)
async def test_hints_no_candidate_meets_raise_invalid_argument_naming_the_field(
    route: Route, upstream: FakeUpstream, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await route("hi", budget_key="team", **options)

    assert refused.value.reason == "MODEL_CANNOT_SERVE"
    assert field in refused.value.field_violations
    assert upstream.received == []


@pytest.mark.parametrize("blocking", [False, True])
async def test_fallback_none_keeps_the_first_choice(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    blocking: bool,
) -> None:
    config_data["retries"] = {"max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.02}
    upstream.by_model["gpt-fake"] = Script(status=500)
    async with start_faregate(to_config(config_data)) as faregate:
        with SyncFaregateClient(faregate.target) as client:
            route = _in_a_thread(client) if blocking else faregate.client.route
            with pytest.raises(Unavailable) as failed:
                await route("hi", budget_key="team", fallback="none")
            kept_to_the_first = upstream.calls_to("cheap-fake")
            fell_back = await route("hi", budget_key="team", fallback="same_route")

    assert failed.value.reason == "UPSTREAM_UNAVAILABLE"
    assert kept_to_the_first == 0
    assert fell_back.model_used == "cheap-fake"


async def test_agent_sampling_and_the_output_cap_reach_the_upstream_and_the_ledger(
    route: Route, faregate: Faregate, upstream: FakeUpstream
) -> None:
    reply = await route(
        "hi", budget_key="team", model="gpt-fake", agent="coder", temperature=0.25,
        max_output_tokens=20, metadata={"ticket": "FG-12"},
    )  # fmt: skip

    (received,) = upstream.received
    assert received.body["temperature"] == 0.25
    assert 20 in (received.body.get("max_completion_tokens"), received.body.get("max_tokens"))
    ((_, record),) = await faregate.running.state.spend("team", "coder", 10, None)
    assert (record.request_id, record.agent) == (reply.request_id, "coder")


async def test_metadata_reaches_the_server_s_checks(route: Route) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await route("hi", budget_key="team", metadata={f"k{i}": "v" for i in range(65)})

    assert refused.value.reason == "INVALID_REQUEST"
    assert "metadata" in refused.value.field_violations


async def test_a_conversation_reaches_the_upstream_in_order(
    route: Route, upstream: FakeUpstream
) -> None:
    earlier = router_pb2.Message(role=router_pb2.ROLE_ASSISTANT, content="4")
    await route(
        [("system", "Be brief."), ("user", "2+2?"), earlier, ("user", "And 3+3?")],
        budget_key="team",
        model="gpt-fake",
    )

    (received,) = upstream.received
    assert [(m["role"], m["content"]) for m in received.body["messages"]] == [
        ("system", "Be brief."),
        ("user", "2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
    ]


async def test_a_retry_with_the_request_id_is_answered_from_the_first_and_paid_once(
    route: Route, faregate: Faregate, upstream: FakeUpstream
) -> None:
    request_id = str(uuid.uuid4())
    first = await route("hi", budget_key="team", request_id=request_id)
    again = await route("hi", budget_key="team", request_id=request_id)

    assert first.request_id == request_id
    assert again == first
    assert len(upstream.received) == 1
    assert await faregate.spent_nano_usd() == first.cost_nano_usd


async def test_additional_budget_keys_charge_each_budget_the_whole_cost(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    config_data["budgets"]["squad"] = {"limit_usd": 10, "window": "none"}
    async with start_faregate(to_config(config_data)) as faregate:
        with SyncFaregateClient(faregate.target) as client:
            reply = await asyncio.to_thread(
                client.route, "hi", budget_key="team", additional_budget_keys=["squad"]
            )

        assert await faregate.spent_nano_usd("team") == reply.cost_nano_usd
        assert await faregate.spent_nano_usd("squad") == reply.cost_nano_usd


@pytest.mark.parametrize(
    ("budget_key", "model", "messages", "kind", "reason"),
    [
        ("nobody", "", "hi", FailedPrecondition, "BUDGET_NOT_FOUND"),
        ("team", "nope", "hi", NotFound, "MODEL_NOT_FOUND"),
        ("team", "", [], InvalidArgument, "INVALID_REQUEST"),
    ],
)
async def test_the_blocking_client_raises_the_typed_errors(
    faregate: Faregate,
    budget_key: str,
    model: str,
    messages: str | list[tuple[str, str]],
    kind: type[FaregateError],
    reason: str,
) -> None:
    with SyncFaregateClient(faregate.target) as client, pytest.raises(kind) as failed:
        await asyncio.to_thread(client.route, messages, budget_key=budget_key, model=model)

    assert failed.value.reason == reason


async def test_the_blocking_client_reads_a_spent_budget_from_the_details(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> None:
    config_data["budgets"]["team"]["limit_usd"] = 0.000001
    async with start_faregate(to_config(config_data)) as faregate:
        with SyncFaregateClient(faregate.target) as client, pytest.raises(BudgetExhausted) as spent:
            await asyncio.to_thread(client.route, "hi", budget_key="team")

    assert spent.value.budget_key == "team"


async def test_the_blocking_stream_yields_text_then_its_accounting(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["one", " two"], usage=(5, 2), finish_reason="length")
    with SyncFaregateClient(faregate.target) as client:
        stream = client.stream_route("hi", budget_key="team", model="gpt-fake", prefer="cost")
        texts = await asyncio.to_thread(list, stream)

    assert texts == ["one", " two"]
    assert stream.start is not None
    assert stream.finish is not None
    assert stream.start.model_used == "gpt-fake"
    assert stream.finish.finish_reason == router_pb2.FINISH_REASON_LENGTH
    assert stream.finish.cost_nano_usd == await faregate.spent_nano_usd()


async def test_the_blocking_stream_raises_its_typed_error_from_iteration(
    faregate: Faregate,
) -> None:
    with SyncFaregateClient(faregate.target) as client:
        stream = client.stream_route("hi", budget_key="team", model="nope")
        with pytest.raises(NotFound) as missing:
            await asyncio.to_thread(list, stream)

    assert missing.value.reason == "MODEL_NOT_FOUND"


async def test_cancelling_the_blocking_stream_ends_it_and_the_upstream_request(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.default = Script(chunks=["a", "b", "c"], pause_after=1, resume=asyncio.Event())
    with SyncFaregateClient(faregate.target) as client:
        stream = client.stream_route("hi", budget_key="team")
        texts = iter(stream)
        first = await asyncio.to_thread(next, texts)
        stream.cancel()
        rest = await asyncio.to_thread(list, texts)

    assert (first, rest) == ("a", [])
    await upstream.wait_for_disconnects(1)


@pytest.mark.parametrize("blocking", [False, True])
async def test_a_stream_left_after_its_first_text_is_cancelled_and_charged_for_that_text(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    blocking: bool,
) -> None:
    # The upstream sends "a", then waits, and faregate's stall cut is far off:
    # only the caller can end the call.
    upstream.default = Script(chunks=["a", "b", "c"], pause_after=1, resume=asyncio.Event())
    config_data["models"]["gpt-fake"]["idle_timeout_s"] = 600
    texts: list[str] = []
    async with start_faregate(to_config(config_data)) as faregate:
        if blocking:
            with SyncFaregateClient(faregate.target) as client:
                blocking_stream = client.stream_route("hi", budget_key="team", model="gpt-fake")

                def read_one() -> None:
                    for text in blocking_stream:
                        texts.append(text)
                        break

                await asyncio.to_thread(read_one)
                # The stream object is still alive here, and its call must not be.
                await upstream.wait_for_disconnects(1)
        else:
            stream = faregate.client.stream_route("hi", budget_key="team", model="gpt-fake")
            async for text in stream:
                texts.append(text)
                break
            # Here too: `stream` holds its call.
            await upstream.wait_for_disconnects(1)

        async def settled() -> bool:
            # Polled: the server's budget store offers no event to wait on.
            return await faregate.reserved_nano_usd() == 0

        await eventually(settled, interval_s=0.001)
        [(_, record)] = await faregate.running.state.spend("team", "", 10, None)
        spent = await faregate.spent_nano_usd()

    counter = TiktokenCounter()
    input_tokens = counter.count_messages([ChatMessage(Role.USER, "hi")])
    assert texts == ["a"]
    assert (record.outcome, record.input_tokens) == ("interrupted", input_tokens)
    assert record.output_tokens == counter.count_text("a")
    assert record.cost_nano_usd == input_tokens * 2_500 + record.output_tokens * 10_000
    assert spent == record.cost_nano_usd


@pytest.mark.parametrize("blocking", [False, True])
async def test_request_ids_are_generated_fresh_per_call_by_default_so_twins_are_both_served(
    faregate: Faregate, upstream: FakeUpstream, blocking: bool
) -> None:
    if blocking:
        with SyncFaregateClient(faregate.target) as client:
            replies = [await asyncio.to_thread(client.route, "hi", budget_key="team")]
            replies.append(await asyncio.to_thread(client.route, "hi", budget_key="team"))
            blocking_stream = client.stream_route("hi", budget_key="team")
            await asyncio.to_thread(list, blocking_stream)
            start = blocking_stream.start
    else:
        async with FaregateClient(faregate.target) as aio_client:
            replies = [await aio_client.route("hi", budget_key="team") for _ in range(2)]
            stream = aio_client.stream_route("hi", budget_key="team")
            await read_stream(stream)
            start = stream.start

    assert start is not None
    ids = [reply.request_id for reply in replies] + [start.request_id]
    assert len(set(ids)) == 3
    assert all(uuid.UUID(request_id).version == 4 for request_id in ids)
    assert len(upstream.received) == 3


async def test_the_blocking_client_speaks_mutual_tls(
    start_faregate: StartFaregate, config_data: dict[str, Any], tmp_path: Path
) -> None:
    pki = write_pki(tmp_path)
    config_data["server"]["tls"] = pki.server_tls(mutual=True)
    tls = ClientTls(pki.ca.cert_pem, pki.client.cert_pem, pki.client.key_pem)
    async with start_faregate(to_config(config_data)) as faregate:
        with SyncFaregateClient(faregate.target, tls=tls) as client:
            reply = await asyncio.to_thread(client.route, "hi", budget_key="team", timeout_s=10)

    assert reply.output == "Hello, world"
