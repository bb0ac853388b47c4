"""Hung upstreams are abandoned in time: a whole answer that has not started
within the model's first-byte timeout, and a stream that sends nothing but
keep-alives for its idle timeout, are stalls that fall back to the next
candidate before any output (and end the stream after it)."""

from __future__ import annotations

from typing import Any

import pytest
from faregate.v1 import router_pb2
from faregate_client import StreamInterrupted, Unavailable

from tests.conftest import StartFaregate, read_stream, to_config
from tests.fakes.upstream import FakeUpstream, Script

OUTCOME = router_pb2.AttemptOutcome.Name
# Far longer than any timeout here: a call still waiting when it passes was never abandoned.
CALLER_DEADLINE_S = 10.0


@pytest.fixture
def resilient(config_data: dict[str, Any]) -> dict[str, Any]:
    config_data["retries"] = {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    config_data["routes"]["pair"] = ["gpt-fake", "cheap-fake"]
    config_data["routes"]["claude-pair"] = ["claude-fake", "cheap-fake"]
    return config_data


@pytest.mark.parametrize("timeouts", [{"idle_timeout_s": 0.3}, {"first_byte_timeout_s": 0.3}])
async def test_a_hung_unary_upstream_falls_back_after_the_first_byte_timeout(
    start_faregate: StartFaregate,
    resilient: dict[str, Any],
    upstream: FakeUpstream,
    timeouts: dict[str, float],
) -> None:
    """The first-byte timeout is the model's own, or else its idle timeout."""
    del resilient["models"]["gpt-fake"]["first_byte_timeout_s"]
    resilient["models"]["gpt-fake"].update(timeouts)
    upstream.by_model["gpt-fake"] = Script(hang_s=3600)
    upstream.by_model["cheap-fake"] = Script(chunks=["fine"], usage=(5, 1))
    async with start_faregate(to_config(resilient)) as faregate:
        reply = await faregate.client.route(
            "hi", budget_key="team", model="pair", timeout_s=CALLER_DEADLINE_S
        )

        assert reply.model_used == "cheap-fake"
        assert reply.output == "fine"
        assert [(a.model, OUTCOME(a.outcome), a.reason) for a in reply.attempts] == [
            ("gpt-fake", "ATTEMPT_OUTCOME_FAILED", "UPSTREAM_STALLED"),
            ("cheap-fake", "ATTEMPT_OUTCOME_SUCCEEDED", ""),
        ]
        await upstream.wait_for_disconnects(1)
        assert upstream.disconnected_models == ["gpt-fake"]
        assert await faregate.spent_nano_usd() == 5 * 150 + 1 * 600
        assert await faregate.reserved_nano_usd() == 0


KEEPALIVES = [
    pytest.param("pair", "gpt-fake", None, id="sse-comments"),
    pytest.param("pair", "gpt-fake", b"data:\n\n", id="events-with-empty-data"),
    pytest.param("claude-pair", "claude-fake", None, id="anthropic-pings"),
]


@pytest.mark.parametrize(("route", "model", "keepalive"), KEEPALIVES)
async def test_a_stream_of_only_keepalives_is_cut_as_stalled_and_falls_back(
    start_faregate: StartFaregate,
    resilient: dict[str, Any],
    upstream: FakeUpstream,
    route: str,
    model: str,
    keepalive: bytes | None,
) -> None:
    resilient["models"][model]["idle_timeout_s"] = 0.3
    upstream.by_model[model] = Script(
        keepalive_after=0, keepalive_every_s=0.05, keepalive_bytes=keepalive
    )
    upstream.by_model["cheap-fake"] = Script(chunks=["ok"], usage=(5, 1))
    async with start_faregate(to_config(resilient)) as faregate:
        stream = faregate.client.stream_route(
            "hi", budget_key="team", model=route, timeout_s=CALLER_DEADLINE_S
        )
        texts = await read_stream(stream)

        assert texts == ["ok"]
        assert stream.start is not None
        assert [(a.model, OUTCOME(a.outcome), a.reason) for a in stream.start.attempts] == [
            (model, "ATTEMPT_OUTCOME_FAILED", "UPSTREAM_STALLED"),
            ("cheap-fake", "ATTEMPT_OUTCOME_SUCCEEDED", ""),
        ]
        await upstream.wait_for_disconnects(1)
        assert upstream.disconnected_models == [model]
        assert await faregate.spent_nano_usd() == 5 * 150 + 1 * 600
        assert await faregate.reserved_nano_usd() == 0


async def test_keepalives_after_output_end_the_stream_as_interrupted_and_charge_the_part(
    start_faregate: StartFaregate, resilient: dict[str, Any], upstream: FakeUpstream
) -> None:
    resilient["models"]["gpt-fake"]["idle_timeout_s"] = 0.3
    upstream.by_model["gpt-fake"] = Script(chunks=["a", "b"], keepalive_after=1)
    async with start_faregate(to_config(resilient)) as faregate:
        received: list[str] = []
        stream = faregate.client.stream_route(
            "hi", budget_key="team", model="pair", timeout_s=CALLER_DEADLINE_S
        )
        with pytest.raises(StreamInterrupted) as caught:
            await read_stream(stream, received)

        assert caught.value.reason == "STREAM_INTERRUPTED"
        assert "no data event" in caught.value.message
        assert received == ["a"]
        assert upstream.calls_to("cheap-fake") == 0
        assert await faregate.spent_nano_usd() > 0
        assert await faregate.reserved_nano_usd() == 0


async def test_a_hung_unary_upstream_with_nowhere_to_fall_back_is_stalled_and_charges_nothing(
    start_faregate: StartFaregate, config_data: dict[str, Any], upstream: FakeUpstream
) -> None:
    config_data["models"]["gpt-fake"]["first_byte_timeout_s"] = 0.3
    upstream.by_model["gpt-fake"] = Script(hang_s=3600)
    async with start_faregate(to_config(config_data)) as faregate:
        with pytest.raises(Unavailable) as caught:
            await faregate.client.route(
                "hi", budget_key="team", model="gpt-fake", timeout_s=CALLER_DEADLINE_S
            )

        assert caught.value.reason == "UPSTREAM_STALLED"
        assert "first_byte_timeout_s (0.3 s)" in caught.value.message
        await upstream.wait_for_disconnects(1)
        assert await faregate.spent_nano_usd() == 0
        assert await faregate.reserved_nano_usd() == 0
