"""Server-wide admission control: over the concurrency cap, or while the event
loop lags, a new call is refused at once with UNAVAILABLE (SERVER_OVERLOADED)
and pushback, counted and logged, charging nothing; calls under the cap, or
once the loop has caught up, are served."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import FaregateClient, FaregateError, Unavailable
from faregate_server.security.api_keys import format_key_hash, new_api_key
from faregate_server.telemetry.request_log import LOGGER_NAME
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

CAP = 3
LAG_LIMIT_S = 0.05
# How long the hog holds the loop each time it runs: well over the limit, so
# every probe wake-up while it runs is late by more than the limit.
HOG_SLICE_S = 0.1


@pytest.fixture
def metrics() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield provider, reader
    provider.shutdown()


def _points(reader: InMemoryMetricReader, name: str) -> dict[str, float]:
    """The metric's points summed by their guard or reason label ("" for neither)."""
    data = reader.get_metrics_data()
    points: dict[str, float] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    attributes = dict(point.attributes or {})
                    label = attributes.get("guard", attributes.get("reason", ""))
                    points[str(label)] = points.get(str(label), 0) + point.value
    return points


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(record.getMessage()) for record in caplog.records if record.name == LOGGER_NAME
    ]


def _overloaded(error: FaregateError, guard: str) -> None:
    assert isinstance(error, Unavailable)
    assert error.reason == "SERVER_OVERLOADED"
    assert error.metadata["guard"] == guard
    assert error.retry_after_s is not None
    assert error.retry_after_s >= 1


def _raw_route(faregate: Faregate) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(faregate.target)
    request = router_pb2.RouteRequest(
        model="gpt-fake",
        budget_key="team",
        messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")],
    )
    return channel, router_pb2_grpc.RouterServiceStub(channel).Route(request, timeout=5)


async def test_calls_over_the_concurrency_cap_are_refused_at_once_and_those_under_it_served(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    metrics: tuple[MeterProvider, InMemoryMetricReader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    config_data["server"]["max_concurrent_calls"] = CAP
    release = asyncio.Event()
    upstream.default = Script(gate=release)
    provider, reader = metrics
    async with start_faregate(to_config(config_data), meter_provider=provider) as faregate:
        held = [
            asyncio.create_task(faregate.client.route("hi", budget_key="team", model="gpt-fake"))
            for _ in range(CAP)
        ]
        await upstream.wait_for_requests(CAP)

        # Bounded: without admission control these would wait on the upstream.
        with pytest.raises(FaregateError) as unary:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=5)
        with pytest.raises(FaregateError) as streamed:
            await read_stream(faregate.client.stream_route("hi", budget_key="team", timeout_s=5))
        channel, call = _raw_route(faregate)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await call
        await channel.close()
        refused_while_full = _points(reader, "faregate.admission.refusals")
        in_flight_while_full = _points(reader, "faregate.calls.in_flight")[""]

        release.set()
        served = await asyncio.gather(*held)
        after = await faregate.client.route("hi", budget_key="team", model="gpt-fake")
        reserved = await faregate.reserved_nano_usd()
        spent = await faregate.spent_nano_usd()

    _overloaded(unary.value, "concurrency")
    assert unary.value.metadata["maxConcurrentCalls"] == str(CAP)
    _overloaded(streamed.value, "concurrency")
    assert raw.value.code() == grpc.StatusCode.UNAVAILABLE
    assert int(dict(raw.value.trailing_metadata() or ())["grpc-retry-pushback-ms"]) >= 1000
    assert refused_while_full == {"concurrency": 3, "loop_lag": 0}
    assert in_flight_while_full == CAP
    assert _points(reader, "faregate.rejections") == {"SERVER_OVERLOADED": 3}
    # Nothing of the refused calls went upstream, was reserved or charged.
    assert len(upstream.received) == CAP + 1
    assert reserved == 0
    assert spent == sum(answer.cost_nano_usd for answer in [*served, after])
    refusals = [line for line in _request_lines(caplog) if line["reason"] == "SERVER_OVERLOADED"]
    assert [(line["rpc"], line["outcome"]) for line in refusals] == [
        ("Route", "UNAVAILABLE"),
        ("StreamRoute", "UNAVAILABLE"),
        ("Route", "UNAVAILABLE"),
    ]
    assert all(line["cost_nano_usd"] == 0 and line["attempts"] == 0 for line in refusals)


async def test_an_unauthenticated_call_over_the_cap_is_refused_before_its_credential_is_read(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    key, stored = new_api_key()
    config_data["auth"] = {
        "enabled": True,
        "principals": {
            "agent": {"api_keys": [format_key_hash(stored)], "budgets": "*", "models": "*"}
        },
    }
    config_data["server"]["max_concurrent_calls"] = 1
    release = asyncio.Event()
    upstream.default = Script(gate=release)
    async with start_faregate(to_config(config_data)) as faregate:
        async with FaregateClient(faregate.target, api_key=key) as client:
            held = asyncio.create_task(client.route("hi", budget_key="team", model="gpt-fake"))
            await upstream.wait_for_requests(1)
            with pytest.raises(FaregateError) as anonymous:
                await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=5)
            release.set()
            await held
        # Under the cap again, the same call meets the authenticator.
        with pytest.raises(FaregateError) as unauthenticated:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake")

    _overloaded(anonymous.value, "concurrency")
    assert unauthenticated.value.reason == "API_KEY_MISSING"


@asynccontextmanager
async def _hogging_the_loop() -> AsyncIterator[None]:
    """Keeps this event loop lagging: a task that computes for HOG_SLICE_S
    each time it runs, and lets everything else run in between."""
    stop = False

    async def hog() -> None:
        while not stop:
            until_s = time.perf_counter() + HOG_SLICE_S
            while time.perf_counter() < until_s:
                pass
            await asyncio.sleep(0)

    task = asyncio.create_task(hog())
    try:
        yield
    finally:
        stop = True
        await task


async def _route_once_caught_up(faregate: Faregate) -> tuple[router_pb2.RouteResponse, int]:
    """A Route sent once the loop has caught up, and how many tries a lag of
    the machine's own (another process taking the core) refused first."""
    admission = faregate.running.admission
    for tries in range(5):
        await eventually(lambda: not admission.statistics().lagging)
        try:
            answer = await faregate.client.route("hi", budget_key="team", model="gpt-fake")
        except FaregateError as error:
            if error.reason != "SERVER_OVERLOADED":
                raise
            continue
        return answer, tries
    raise AssertionError("the loop never caught up")


async def test_calls_are_refused_while_the_event_loop_lags_and_served_once_it_catches_up(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    metrics: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    config_data["server"]["loop_lag_limit_s"] = LAG_LIMIT_S
    provider, reader = metrics
    async with start_faregate(to_config(config_data), meter_provider=provider) as faregate:
        admission = faregate.running.admission
        before, spurious_before = await _route_once_caught_up(faregate)

        async with _hogging_the_loop():
            await eventually(lambda: admission.statistics().lagging)
            # Both at once: each step of a call waits out a slice of the hog.
            unary, streamed = await asyncio.gather(
                faregate.client.route("hi", budget_key="team", model="gpt-fake"),
                read_stream(faregate.client.stream_route("hi", budget_key="team")),
                return_exceptions=True,
            )
            lag_while_hogged_s = _points(reader, "faregate.loop.lag")[""]

        after, spurious_after = await _route_once_caught_up(faregate)
        reserved = await faregate.reserved_nano_usd()
        spent = await faregate.spent_nano_usd()

    assert isinstance(unary, FaregateError)
    _overloaded(unary, "loop_lag")
    assert int(unary.metadata["loopLagMs"]) > LAG_LIMIT_S * 1000
    assert isinstance(streamed, FaregateError)
    _overloaded(streamed, "loop_lag")
    assert lag_while_hogged_s > LAG_LIMIT_S
    assert _points(reader, "faregate.admission.refusals") == {
        "concurrency": 0,
        "loop_lag": 2 + spurious_before + spurious_after,
    }
    assert len(upstream.received) == 2  # before and after, never the refused
    assert reserved == 0
    assert spent == before.cost_nano_usd + after.cost_nano_usd


async def test_a_single_stall_of_the_loop_refuses_nothing(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    metrics: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    config_data["server"]["loop_lag_limit_s"] = LAG_LIMIT_S
    provider, reader = metrics
    async with start_faregate(to_config(config_data), meter_provider=provider) as faregate:
        await faregate.client.route("hi", budget_key="team", model="gpt-fake")
        # One long callback (say a huge prompt counted on the loop): the
        # probe wakes once far too late, then on time again.
        until_s = time.perf_counter() + 4 * HOG_SLICE_S
        while time.perf_counter() < until_s:
            pass
        answer = await faregate.client.route("hi", budget_key="team", model="gpt-fake")

    assert answer.output == "Hello, world"
    assert _points(reader, "faregate.admission.refusals") == {"concurrency": 0, "loop_lag": 0}


async def test_a_stopping_server_says_shutting_down_even_when_it_is_also_full(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["server"]["max_concurrent_calls"] = 1
    release = asyncio.Event()
    upstream.default = Script(gate=release)
    async with start_faregate(to_config(config_data)) as faregate:
        held = asyncio.create_task(faregate.client.route("hi", budget_key="team", model="gpt-fake"))
        await upstream.wait_for_requests(1)
        with pytest.raises(FaregateError) as full:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=5)
        faregate.running.drain.close()
        with pytest.raises(FaregateError) as stopping:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=5)
        release.set()
        served = await held

    _overloaded(full.value, "concurrency")
    # Retrying here is pointless once it stops: the caller must go elsewhere.
    assert stopping.value.reason == "SHUTTING_DOWN"
    assert served.output == "Hello, world"
