"""Upstream answers too large to take: bodies over `max_response_bytes` (gzip
bombs included, counted after decompression), Content-Lengths over it, and
SSE events over it. Each is an upstream failure of its own reason that falls
back like a malformed answer, charges nothing (or, after output, only the
delivered part), leaks no reservation, holds memory to the cap, and leaves
the server serving."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from faregate.v1 import router_pb2
from faregate_client import StreamInterrupted, Unavailable

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.fakes.raw_upstream import (
    Answer,
    RawUpstream,
    announced_length,
    endless_json,
    gzip_bomb,
    incompressible_gzip,
    openai_answer_json,
    sse_answer,
)
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.eventually import eventually
from tests.support.memory import peak_rss_growth

OUTCOME = router_pb2.AttemptOutcome.Name
MiB = 1 << 20
# faregate reads at most max_response_bytes (3 MiB by default) of a body: what
# it holds at once stays far below this, where the unbounded read held GiBs.
PEAK_GROWTH_BOUND = 64 * MiB
# What one `_still_serves` call costs: the fake's default usage, 11 in and 3
# out, at cheap-fake's prices.
WARM_UP_COST_NANO_USD = 11 * 150 + 3 * 600


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    fake = RawUpstream()
    await fake.start()
    yield fake
    await fake.aclose()


@pytest.fixture
def hostile(config_data: dict[str, Any], raw: RawUpstream) -> dict[str, Any]:
    """gpt-fake behind the hostile upstream; cheap-fake behind the well-behaved
    one; retries on, over a route of the two."""
    config_data["models"]["gpt-fake"]["api_base"] = f"{raw.base_url}/v1"
    config_data["retries"] = {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    config_data["routes"]["pair"] = ["gpt-fake", "cheap-fake"]
    return config_data


async def _still_serves(faregate: Faregate) -> None:
    reply = await faregate.client.route("hi", budget_key="team", model="cheap-fake")
    assert reply.output == "Hello, world"


OVERSIZED_BODIES = [
    pytest.param(lambda: gzip_bomb(1024 * MiB), id="1MB-gzip-inflating-to-1GB"),
    pytest.param(lambda: endless_json(256 * MiB), id="256MB-json-no-length"),
    pytest.param(lambda: announced_length(10 * 1024 * MiB), id="content-length-claims-10GB"),
]


@pytest.mark.parametrize("make_answer", OVERSIZED_BODIES)
async def test_an_oversized_answer_fails_cheaply_and_charges_nothing(
    start_faregate: StartFaregate,
    hostile: dict[str, Any],
    upstream: FakeUpstream,
    raw: RawUpstream,
    make_answer: Any,
) -> None:
    hostile["retries"] = {"max_attempts": 1}
    raw.default = make_answer()
    async with start_faregate(to_config(hostile)) as faregate:
        await _still_serves(faregate)  # warm: first-call allocations are not the answer's
        with peak_rss_growth() as growth, pytest.raises(Unavailable) as caught:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=10)

        assert caught.value.reason == "UPSTREAM_RESPONSE_TOO_LARGE"
        assert "max_response_bytes" in caught.value.message
        assert await faregate.spent_nano_usd() == WARM_UP_COST_NANO_USD
        assert await faregate.reserved_nano_usd() == 0
        if growth.bytes is not None:
            assert growth.bytes < PEAK_GROWTH_BOUND
        await _still_serves(faregate)


async def test_the_hostile_upstream_is_hung_up_on_soon_after_the_cap(
    start_faregate: StartFaregate, hostile: dict[str, Any], raw: RawUpstream
) -> None:
    hostile["retries"] = {"max_attempts": 1}
    raw.default = endless_json(256 * MiB)
    async with start_faregate(to_config(hostile)) as faregate:
        with pytest.raises(Unavailable):
            await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=10)
        await _hung_up(raw)

        [served] = raw.served
        assert served.hung_up
        # The cap plus what the sockets' buffers took before the hang-up.
        assert served.body_bytes_sent < 64 * MiB


async def _hung_up(raw: RawUpstream) -> None:
    """Waits until the hostile fake noticed the hang-up (its writes fail)."""
    await eventually(lambda: raw.served and raw.served[-1].hung_up)


async def test_a_content_length_over_the_cap_is_refused_unread(
    start_faregate: StartFaregate, hostile: dict[str, Any], raw: RawUpstream
) -> None:
    hostile["retries"] = {"max_attempts": 1}
    hostile["models"]["gpt-fake"]["max_response_bytes"] = 4096
    # One byte over the cap plus compression's slack (0.1 % and 1 KiB).
    raw.default = announced_length(4096 + 4 + 1024 + 1)
    async with start_faregate(to_config(hostile)) as faregate:
        with pytest.raises(Unavailable) as caught:
            await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=10)

        assert caught.value.reason == "UPSTREAM_RESPONSE_TOO_LARGE"
        assert "announced 5125 bytes" in caught.value.message
        assert raw.served[0].body_bytes_sent < 5125


async def test_an_incompressible_gzip_answer_within_the_cap_is_served(
    start_faregate: StartFaregate, hostile: dict[str, Any], raw: RawUpstream
) -> None:
    """Its Content-Length is over max_response_bytes (gzip's frame and block
    headers), what it inflates to is not: the cap is on the answer."""
    cap = 256 << 10
    hostile["retries"] = {"max_attempts": 1}
    hostile["models"]["gpt-fake"]["max_response_bytes"] = cap
    content = "x" * (cap - len(openai_answer_json("")))
    answer = incompressible_gzip(openai_answer_json(content))
    assert len(openai_answer_json(content)) == cap < len(next(answer.body()))
    raw.default = answer
    async with start_faregate(to_config(hostile)) as faregate:
        reply = await faregate.client.route("hi", budget_key="team", model="gpt-fake", timeout_s=10)

        assert reply.output == content


async def test_an_oversized_answer_falls_back_to_the_next_candidate(
    start_faregate: StartFaregate, hostile: dict[str, Any], upstream: FakeUpstream, raw: RawUpstream
) -> None:
    raw.default = gzip_bomb(1024 * MiB)
    upstream.by_model["cheap-fake"] = Script(chunks=["fine"], usage=(5, 1))
    async with start_faregate(to_config(hostile)) as faregate:
        reply = await faregate.client.route("hi", budget_key="team", model="pair", timeout_s=10)

        assert reply.model_used == "cheap-fake"
        assert [(a.model, OUTCOME(a.outcome), a.reason) for a in reply.attempts] == [
            ("gpt-fake", "ATTEMPT_OUTCOME_FAILED", "UPSTREAM_RESPONSE_TOO_LARGE"),
            ("cheap-fake", "ATTEMPT_OUTCOME_SUCCEEDED", ""),
        ]
        assert await faregate.spent_nano_usd() == 5 * 150 + 1 * 600
        assert await faregate.reserved_nano_usd() == 0


@pytest.mark.parametrize(
    ("model", "served_by"), [("gpt-fake", None), ("pair", "cheap-fake")], ids=["alone", "pair"]
)
async def test_an_oversized_answer_is_not_retried_on_the_same_model(
    start_faregate: StartFaregate,
    hostile: dict[str, Any],
    upstream: FakeUpstream,
    raw: RawUpstream,
    model: str,
    served_by: str | None,
) -> None:
    """Asked again, the model would most likely answer as large (and bill it
    again): another candidate is tried, the same model is not."""
    raw.default = announced_length(10 * 1024 * MiB)
    async with start_faregate(to_config(hostile)) as faregate:
        if served_by is None:
            with pytest.raises(Unavailable) as caught:
                await faregate.client.route("hi", budget_key="team", model=model, timeout_s=10)
            assert caught.value.reason == "UPSTREAM_RESPONSE_TOO_LARGE"
        else:
            reply = await faregate.client.route("hi", budget_key="team", model=model, timeout_s=10)
            assert reply.model_used == served_by
            assert [a.model for a in reply.attempts] == ["gpt-fake", served_by]

        assert len(raw.served) == 1
        assert await faregate.reserved_nano_usd() == 0


def _openai_delta(text: str) -> bytes:
    return b'data: {"choices": [{"index": 0, "delta": {"content": "%s"}}]}\n\n' % text.encode()


def _ten_mb_line(before: bytes = b"") -> Answer:
    """An SSE stream whose next line, after `before`, is 10 MB of data."""

    def pieces() -> Iterator[bytes]:
        yield before + b"data: "
        for _ in range(160):
            yield b"a" * (64 << 10)
        yield b"\n\n"

    return sse_answer(pieces)


async def test_a_10_mb_sse_line_before_the_first_token_falls_back(
    start_faregate: StartFaregate, hostile: dict[str, Any], upstream: FakeUpstream, raw: RawUpstream
) -> None:
    raw.default = _ten_mb_line()
    upstream.by_model["cheap-fake"] = Script(chunks=["ok"], usage=(5, 1))
    async with start_faregate(to_config(hostile)) as faregate:
        stream = faregate.client.stream_route("hi", budget_key="team", model="pair", timeout_s=10)
        texts = await read_stream(stream)

        assert texts == ["ok"]
        assert stream.start is not None
        assert [(a.model, OUTCOME(a.outcome), a.reason) for a in stream.start.attempts] == [
            ("gpt-fake", "ATTEMPT_OUTCOME_FAILED", "UPSTREAM_RESPONSE_TOO_LARGE"),
            ("cheap-fake", "ATTEMPT_OUTCOME_SUCCEEDED", ""),
        ]
        assert await faregate.spent_nano_usd() == 5 * 150 + 1 * 600
        assert await faregate.reserved_nano_usd() == 0


async def test_a_10_mb_sse_line_after_the_first_token_interrupts_and_charges_the_part(
    start_faregate: StartFaregate,
    hostile: dict[str, Any],
    upstream: FakeUpstream,
    raw: RawUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw.default = _ten_mb_line(before=_openai_delta("He"))
    async with start_faregate(to_config(hostile)) as faregate:
        received: list[str] = []
        stream = faregate.client.stream_route("hi", budget_key="team", model="pair", timeout_s=10)
        with peak_rss_growth() as growth, pytest.raises(StreamInterrupted) as caught:
            await read_stream(stream, received)

        assert caught.value.code is grpc.StatusCode.ABORTED
        assert caught.value.reason == "STREAM_INTERRUPTED"
        assert received == ["He"]
        assert upstream.calls_to("cheap-fake") == 0
        assert stream.start is not None
        assert 0 < await faregate.spent_nano_usd() < stream.start.reserved_nano_usd
        assert await faregate.reserved_nano_usd() == 0
        if growth.bytes is not None:
            assert growth.bytes < PEAK_GROWTH_BOUND
        # An expected upstream failure: no "unexpected error", no traceback.
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        await _still_serves(faregate)
