"""Client request ids (AIP-155): a retried request is never served or charged twice."""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

import pytest
from faregate_client import Aborted, AlreadyExists, InvalidArgument, Unavailable

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script


@pytest.fixture(params=["memory", "redis"])
async def faregate(
    request: pytest.FixtureRequest, start_faregate: StartFaregate, config_data: dict[str, Any]
) -> Any:
    """faregate on the base config, with its state in memory and in Redis."""
    if request.param == "redis":
        config_data["state"] = request.getfixturevalue("redis_state")
    async with start_faregate(to_config(config_data)) as running:
        yield running


async def test_a_retried_route_gets_the_recorded_response_and_pays_once(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    request_id = str(uuid.uuid4())
    first = await faregate.client.route("hi", budget_key="team", request_id=request_id)
    again = await faregate.client.route("hi", budget_key="team", request_id=request_id)

    assert again == first
    assert first.request_id == request_id
    assert len(upstream.received) == 1
    assert await faregate.spent_nano_usd() == first.cost_nano_usd


async def test_a_retried_stream_gets_already_exists_with_the_first_accounting(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    request_id = str(uuid.uuid4())
    stream = faregate.client.stream_route("hi", budget_key="team", request_id=request_id)
    assert "".join(await read_stream(stream)) == "Hello, world"
    assert stream.finish is not None
    cost = stream.finish.cost_nano_usd

    with pytest.raises(AlreadyExists) as served:
        await read_stream(
            faregate.client.stream_route("hi", budget_key="team", request_id=request_id)
        )

    assert served.value.reason == "REQUEST_ALREADY_SERVED"
    assert served.value.cost_nano_usd == cost
    assert served.value.metadata["outputTokens"] == "3"
    assert len(upstream.received) == 1
    assert await faregate.spent_nano_usd() == cost


async def test_a_twin_of_a_request_in_flight_is_aborted(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    gate = asyncio.Event()
    upstream.default = Script(gate=gate)
    request_id = str(uuid.uuid4())
    first = asyncio.create_task(
        faregate.client.route("hi", budget_key="team", request_id=request_id)
    )
    await upstream.wait_for_requests(1)

    with pytest.raises(Aborted) as twin:
        await faregate.client.route("hi", budget_key="team", request_id=request_id)
    gate.set()
    served = await first

    assert twin.value.reason == "REQUEST_IN_FLIGHT"
    assert await faregate.spent_nano_usd() == served.cost_nano_usd


async def test_an_id_reused_for_another_request_is_refused(faregate: Faregate) -> None:
    request_id = str(uuid.uuid4())
    await faregate.client.route("hi", budget_key="team", request_id=request_id)

    with pytest.raises(InvalidArgument) as reused:
        await faregate.client.route("something else", budget_key="team", request_id=request_id)

    assert reused.value.reason == "REQUEST_ID_REUSED"
    assert "request_id" in reused.value.field_violations


async def test_a_failed_request_leaves_its_id_free_for_the_retry(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    upstream.queue(Script(status=500))
    request_id = str(uuid.uuid4())
    with pytest.raises(Unavailable):
        await faregate.client.route(
            "hi", budget_key="team", model="gpt-fake", request_id=request_id
        )

    served = await faregate.client.route(
        "hi", budget_key="team", model="gpt-fake", request_id=request_id
    )

    assert len(upstream.received) == 2
    assert await faregate.spent_nano_usd() == served.cost_nano_usd


async def test_every_replica_answers_a_retry_from_the_shared_store(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    redis_state: dict[str, Any],
    upstream: FakeUpstream,
) -> None:
    config_data["state"] = redis_state
    config = to_config(copy.deepcopy(config_data))
    request_id = str(uuid.uuid4())
    async with start_faregate(config) as one, start_faregate(config) as two:
        first = await one.client.route("hi", budget_key="team", request_id=request_id)
        again = await two.client.route("hi", budget_key="team", request_id=request_id)

        assert again == first
        assert len(upstream.received) == 1
        assert await two.spent_nano_usd() == first.cost_nano_usd
