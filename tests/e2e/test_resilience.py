"""Fallbacks, retries, the retry budget, circuit breakers and hedging, end to
end against fake upstreams scripted per model."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import FaregateError, InvalidArgument, StreamInterrupted, Unavailable
from faregate_server.domain import ChatMessage, Role, RouteCall

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually

OUTCOME = router_pb2.AttemptOutcome.Name


@pytest.fixture
def resilient(config_data: dict[str, Any]) -> dict[str, Any]:
    """Retries on (three attempts), fast backoff, and a route of two peers."""
    config_data["retries"] = {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    # gpt-fake's quality outweighs cheap-fake's price: it goes first.
    config_data["routes"]["pair"] = ["gpt-fake", "cheap-fake"]
    return config_data


FALLBACK_FAILURES = [
    pytest.param(
        Script(status=429, headers={"Retry-After": "30"}), "UPSTREAM_RATE_LIMITED", id="429"
    ),
    pytest.param(Script(status=500), "UPSTREAM_UNAVAILABLE", id="500"),
    pytest.param(Script(status=529), "UPSTREAM_UNAVAILABLE", id="529"),
    pytest.param(Script(raw_sse=[b"data: {garbage\n\n"]), "UPSTREAM_UNAVAILABLE", id="garbage"),
    pytest.param(
        Script(chunks=["a"], stall_after=0), "UPSTREAM_STALLED", id="hang-before-first-token"
    ),
]


@pytest.mark.parametrize(("failure", "reason"), FALLBACK_FAILURES)
async def test_stream_falls_back_to_the_next_candidate_before_the_first_token(
    start_faregate: StartFaregate,
    resilient: dict[str, Any],
    upstream: FakeUpstream,
    failure: Script,
    reason: str,
) -> None:
    upstream.by_model["gpt-fake"] = failure
    upstream.by_model["cheap-fake"] = Script(chunks=["ok"], usage=(5, 1))
    async with start_faregate(to_config(resilient)) as faregate:
        stream = faregate.client.stream_route("hi", budget_key="team", model="pair")
        texts = await read_stream(stream)

        assert texts == ["ok"]
        assert stream.start is not None
        assert stream.start.model_used == "cheap-fake"
        assert [(a.model, OUTCOME(a.outcome), a.reason) for a in stream.start.attempts] == [
            ("gpt-fake", "ATTEMPT_OUTCOME_FAILED", reason),
            ("cheap-fake", "ATTEMPT_OUTCOME_SUCCEEDED", ""),
        ]
        assert stream.finish is not None
        assert stream.finish.cost_nano_usd == 5 * 150 + 1 * 600
        assert await faregate.spent_nano_usd() == stream.finish.cost_nano_usd
        assert await faregate.reserved_nano_usd() == 0


async def test_route_falls_back_and_reports_every_attempt(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    upstream.by_model["gpt-fake"] = Script(status=503)
    upstream.by_model["cheap-fake"] = Script(chunks=["fine"], usage=(5, 1))
    async with start_faregate(to_config(resilient)) as faregate:
        reply = await faregate.client.route("hi", budget_key="team", model="pair")

        assert reply.model_used == "cheap-fake"
        assert [a.model for a in reply.attempts] == ["gpt-fake", "cheap-fake"]
        assert reply.attempts[-1].cost_nano_usd == reply.cost_nano_usd
        assert await faregate.reserved_nano_usd() == 0


async def test_rate_limited_model_cools_down_for_its_retry_after(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    upstream.by_model["gpt-fake"] = Script(status=429, headers={"Retry-After": "30"})
    async with start_faregate(to_config(resilient)) as faregate:
        await faregate.client.route("hi", budget_key="team", model="pair")
        second = await faregate.client.route("hi", budget_key="team", model="pair")

        assert upstream.calls_to("gpt-fake") == 1  # the second request skipped it
        assert [a.model for a in second.attempts] == ["cheap-fake"]


@pytest.mark.parametrize(
    ("status", "error_type"), [(400, InvalidArgument), (401, FaregateError)], ids=["400", "401"]
)
async def test_requests_that_would_fail_anywhere_are_not_retried(
    start_faregate: StartFaregate,
    resilient: dict[str, Any],
    upstream: FakeUpstream,
    status: int,
    error_type: type[FaregateError],
) -> None:
    upstream.by_model["gpt-fake"] = Script(status=status)
    async with start_faregate(to_config(resilient)) as faregate:
        with pytest.raises(error_type):
            await faregate.client.route("hi", budget_key="team", model="pair")

        assert upstream.calls_to("cheap-fake") == 0
        assert upstream.calls_to("gpt-fake") == 1
        assert await faregate.reserved_nano_usd() == 0


async def test_failure_after_the_first_token_is_not_retried_and_charges_the_part(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    upstream.by_model["gpt-fake"] = Script(chunks=["a", "b", "c"], drop_after=2)
    async with start_faregate(to_config(resilient)) as faregate:
        received: list[str] = []
        stream = faregate.client.stream_route("hi", budget_key="team", model="pair")
        with pytest.raises(StreamInterrupted):
            await read_stream(stream, received)

        assert received == ["a", "b"]
        assert upstream.calls_to("cheap-fake") == 0
        assert await faregate.spent_nano_usd() > 0
        assert await faregate.reserved_nano_usd() == 0


async def test_explicit_model_is_retried_but_never_swapped(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    upstream.by_model["gpt-fake"] = Script(status=500)
    async with start_faregate(to_config(resilient)) as faregate:
        with pytest.raises(Unavailable):
            await faregate.client.route("hi", budget_key="team", model="gpt-fake")

        assert upstream.calls_to("gpt-fake") == 3  # max_attempts, with backoff between
        assert upstream.calls_to("cheap-fake") == 0
        assert await faregate.reserved_nano_usd() == 0


async def test_fallback_none_keeps_the_first_choice(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    resilient["retries"]["max_attempts"] = 1
    upstream.by_model["gpt-fake"] = Script(status=500)
    async with start_faregate(to_config(resilient)) as faregate:
        stub_request = router_pb2.RouteRequest(
            model="pair",
            budget_key="team",
            fallback=router_pb2.FALLBACK_POLICY_NONE,
            messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="hi")],
        )
        async with grpc.aio.insecure_channel(faregate.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await router_pb2_grpc.RouterServiceStub(channel).Route(stub_request)

        assert upstream.calls_to("cheap-fake") == 0


async def test_outage_is_capped_by_the_breaker_and_the_retry_budget(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    requests = 200
    upstream.by_model["gpt-fake"] = Script(status=500)
    upstream.by_model["cheap-fake"] = Script(chunks=["ok"], usage=(5, 1))
    async with start_faregate(to_config(resilient)) as faregate:
        failed = 0
        for _ in range(requests):
            try:
                await faregate.client.route("hi", budget_key="team", model="pair")
            except Unavailable:
                failed += 1  # the retry budget said no: the outage shows, it isn't amplified

        calls = len(upstream.received)
        print(f"outage: {calls / requests:.3f} upstream calls per client request, {failed} failed")
        breaker = faregate.running.catalog.deployments["gpt-fake"].breaker
        assert breaker.state.value == "open"
        assert upstream.calls_to("gpt-fake") == 5  # consecutive_failures, then open
        assert failed <= 5
        assert calls / requests <= 1 + 0.1


async def test_retry_budget_caps_retries_when_the_breaker_stays_closed(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    requests = 100
    resilient["models"]["gpt-fake"]["breaker"] = {
        "consecutive_failures": 10_000,
        "min_requests": 10_000,
    }
    upstream.by_model["gpt-fake"] = Script(status=500)
    async with start_faregate(to_config(resilient)) as faregate:
        for _ in range(requests):
            with pytest.raises(Unavailable):
                await faregate.client.route("hi", budget_key="team", model="gpt-fake")

        calls = upstream.calls_to("gpt-fake")
        print(f"outage without breaker: {calls / requests:.3f} upstream calls per client request")
        # ratio 0.1 of the window's requests plus the minimum of 3 per window.
        assert calls <= requests + 0.1 * requests + 3
        assert await faregate.reserved_nano_usd() == 0


async def test_hedge_wins_when_the_primary_is_slow_and_the_loser_is_cancelled(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    resilient["routes"]["pair"] = {"candidates": ["gpt-fake", "cheap-fake"], "hedge_after_s": 0.1}
    upstream.by_model["gpt-fake"] = Script(hang_s=5, usage=(5, 1))
    upstream.by_model["cheap-fake"] = Script(chunks=["quick"], usage=(5, 1))
    async with start_faregate(to_config(resilient)) as faregate:
        stream = faregate.client.stream_route("hi", budget_key="team", model="pair")
        texts = await read_stream(stream)
        won_at = time.monotonic()
        await upstream.wait_for_disconnects(1)

        assert texts == ["quick"]
        assert stream.start is not None
        assert stream.start.model_used == "cheap-fake"
        outcomes = {(a.model, OUTCOME(a.outcome), a.hedge) for a in stream.start.attempts}
        assert outcomes == {
            ("gpt-fake", "ATTEMPT_OUTCOME_CANCELLED", False),
            ("cheap-fake", "ATTEMPT_OUTCOME_SUCCEEDED", True),
        }
        assert upstream.disconnected_models == ["gpt-fake"]
        assert upstream.disconnected_at[0] - won_at < 0.1
        assert await faregate.spent_nano_usd() == 5 * 150 + 1 * 600  # the loser delivered nothing
        assert await faregate.reserved_nano_usd() == 0


async def test_no_hedge_when_the_budget_cannot_cover_both(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    resilient["routes"]["pair"] = {"candidates": ["gpt-fake", "cheap-fake"], "hedge_after_s": 0.05}
    # Room for gpt-fake's worst case only: 100 output tokens at $10/M plus the input.
    resilient["budgets"]["tight"] = {"limit_usd": "0.00102"}
    upstream.by_model["gpt-fake"] = Script(hang_s=0.3, usage=(5, 1))
    async with start_faregate(to_config(resilient)) as faregate:
        reply = await faregate.client.route("hi", budget_key="tight", model="pair")

        assert reply.model_used == "gpt-fake"
        assert upstream.calls_to("cheap-fake") == 0
        assert await faregate.reserved_nano_usd("tight") == 0


async def test_cancelling_a_hedged_request_cancels_both_upstreams(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    resilient["routes"]["pair"] = {"candidates": ["gpt-fake", "cheap-fake"], "hedge_after_s": 0.05}
    upstream.default = Script(hang_s=5)
    async with start_faregate(to_config(resilient)) as faregate:
        call = asyncio.create_task(faregate.client.route("hi", budget_key="team", model="pair"))
        await upstream.wait_for_requests(2)
        call.cancel()
        await upstream.wait_for_disconnects(2)

        assert sorted(upstream.disconnected_models) == ["cheap-fake", "gpt-fake"]

        async def settled() -> bool:
            return await faregate.reserved_nano_usd() == 0

        await eventually(settled, interval_s=0.001)


async def test_completed_streams_feed_the_breaker_and_latency(
    faregate: Faregate, upstream: FakeUpstream
) -> None:
    # A failure every third stream: never five in a row, under half the window.
    upstream.queue(*(Script(status=500) if i % 3 == 2 else Script() for i in range(10)))
    for _ in range(10):
        with contextlib.suppress(Unavailable):
            await read_stream(
                faregate.client.stream_route("hi", budget_key="team", model="gpt-fake")
            )

    deployment = faregate.running.catalog.deployments["gpt-fake"]
    assert deployment.breaker.state.value == "closed"
    assert deployment.latency.samples == 7
    assert deployment.latency.in_flight == 0


@pytest.mark.parametrize("rpc", ["route", "stream"])
async def test_cancel_at_any_point_after_a_hedge_wins_leaks_nothing(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream, rpc: str
) -> None:
    resilient["retries"]["budget_min_retries"] = 1000  # every round may hedge
    resilient["routes"]["pair"] = {"candidates": ["gpt-fake", "cheap-fake"], "hedge_after_s": 0.02}
    call = RouteCall(
        model="pair", messages=(ChatMessage(Role.USER, "hi"),), agent="", budget_key="team",
        max_output_tokens=None, temperature=None, metadata={},
    )  # fmt: skip
    async with start_faregate(to_config(resilient)) as faregate:
        gateway = faregate.running.gateway
        cheap_pool = faregate.running.catalog.deployments["cheap-fake"].pool

        async def serve_one() -> None:
            deadline_s = asyncio.get_running_loop().time() + 10
            if rpc == "route":
                await gateway.route(call, deadline_s)
            else:
                async with contextlib.aclosing(gateway.stream(call, deadline_s)) as events:
                    async for _ in events:
                        pass

        # Cancel after 0, 1, 2, ... loop turns past the hedge's answer, so the
        # cancellation lands at every await of the race's ending in turn.
        for turns in range(30):
            gate = asyncio.Event()
            upstream.by_model["gpt-fake"] = Script(hang_s=5)
            upstream.by_model["cheap-fake"] = Script(gate=gate)
            seen = len(upstream.received)
            task = asyncio.create_task(serve_one())
            await upstream.wait_for_requests(seen + 2)
            gate.set()
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.02)

            assert await faregate.reserved_nano_usd() == 0, f"leaked after {turns} turns"
            assert cheap_pool.statistics().in_use == 0


def _every_third_fails(model: str, healthy: Script) -> Callable[[dict[str, Any]], Script]:
    """A script chooser: `model` answers 503 to every third request it gets."""
    seen = itertools.count(1)

    def choose(body: dict[str, Any]) -> Script:
        if body.get("model") == model and next(seen) % 3 == 0:
            return Script(status=503)
        return healthy

    return choose


async def test_fallback_to_a_healthy_candidate_is_not_refused_by_the_retry_budget(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    requests, batch = 100, 5
    upstream.choose = _every_third_fails("gpt-fake", Script(chunks=["ok"], usage=(5, 1)))
    async with start_faregate(to_config(resilient)) as faregate:
        served: list[str] = []
        failed = 0
        for _ in range(requests // batch):
            replies = await asyncio.gather(
                *(
                    faregate.client.route("hi", budget_key="team", model="pair")
                    for _ in range(batch)
                ),
                return_exceptions=True,
            )
            for reply in replies:
                if isinstance(reply, Unavailable):
                    failed += 1
                else:
                    assert isinstance(reply, router_pb2.RouteResponse), reply
                    served.append(reply.model_used)

        flaky_calls = upstream.calls_to("gpt-fake")
        fallback_calls = upstream.calls_to("cheap-fake")
        print(
            f"flaky route: {len(served)} of {requests} served, {flaky_calls} calls to the"
            f" flaky model, {fallback_calls} to the fallback"
        )
        assert failed == 0
        # Every failure of the flaky model (one in three of its calls) fell back once.
        assert fallback_calls == served.count("cheap-fake") == flaky_calls // 3
        assert flaky_calls + fallback_calls == requests + flaky_calls // 3
        flaky = faregate.running.catalog.deployments["gpt-fake"]
        assert flaky.retry_budget.statistics().retries_in_window == 0  # a fallback is no retry
        # Failures that fell back still count for the breaker, but one in three
        # stays under its error_rate (0.5) and never makes five in a row.
        breaker = flaky.breaker.statistics()
        assert breaker.window_failures == flaky_calls // 3
        assert breaker.opened_total == 0
        assert await faregate.reserved_nano_usd() == 0


async def test_retry_budget_still_caps_same_model_retries_after_free_fallbacks(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    requests = 100
    no_breaker = {"consecutive_failures": 10_000, "min_requests": 10_000}
    for model in ("gpt-fake", "cheap-fake"):
        resilient["models"][model]["breaker"] = no_breaker
    upstream.default = Script(status=500)
    async with start_faregate(to_config(resilient)) as faregate:
        for _ in range(requests):
            with pytest.raises(Unavailable):
                await faregate.client.route("hi", budget_key="team", model="pair")

        # Each request: gpt-fake, the fallback to cheap-fake (free), then a
        # third attempt only where cheap-fake's retry budget allowed a retry:
        # ratio 0.1 of its window's requests plus the minimum of 3.
        assert upstream.calls_to("gpt-fake") == requests
        assert requests <= upstream.calls_to("cheap-fake") <= requests + 0.1 * requests + 3
        budget = faregate.running.catalog.deployments["cheap-fake"].retry_budget.statistics()
        assert budget.refused_total >= requests - (0.1 * requests + 3)
        assert await faregate.reserved_nano_usd() == 0
