"""Provider adapters against the fake upstream's real HTTP server, with the
SSE edge cases real providers produce."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from faregate_server.config.schema import Config
from faregate_server.domain import (
    ChatMessage,
    FinishReason,
    Role,
    StreamEnd,
    UpstreamRequest,
    Usage,
)
from faregate_server.upstream.providers import UpstreamError, UpstreamErrorKind, build_provider
from faregate_server.upstream.providers.base import Provider, parse_retry_after
from faregate_server.upstream.redaction import Redactor

from tests.conftest import to_config
from tests.fakes.upstream import FakeUpstream, Script

REQUEST = UpstreamRequest(
    upstream_model="m", messages=(ChatMessage(Role.USER, "hi"),), max_output_tokens=8,
    temperature=None,
)  # fmt: skip


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def config(config_data: dict[str, Any]) -> Config:
    return to_config(config_data)


def _provider(config: Config, session: aiohttp.ClientSession, model: str) -> Provider:
    return build_provider(config.models[model], session, Redactor())


async def _collect(provider: Provider) -> tuple[list[str], StreamEnd]:
    texts: list[str] = []
    end = None
    async for item in provider.stream(REQUEST):
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, StreamEnd):
            end = item
    assert end is not None
    return texts, end


def _openai_chunk(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})


OPENAI_USAGE = json.dumps({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})

OPENAI_EDGE_CASES = {
    "split-across-reads": [
        f"data: {_openai_chunk('He')}\n".encode()[:9],
        f"data: {_openai_chunk('He')}\n".encode()[9:] + b"\n",
        f"data: {_openai_chunk('llo')}\n\n".encode(),
        f"data: {OPENAI_USAGE}\n\ndata: [DONE]\n\n".encode(),
    ],
    "many-events-in-one-read": [
        f"data: {_openai_chunk('He')}\n\ndata: {_openai_chunk('llo')}\n\n"
        f"data: {OPENAI_USAGE}\n\ndata: [DONE]\n\n".encode()
    ],
    "comments-and-keepalives": [
        b": keep-alive\n\n",
        f": OPENROUTER PROCESSING\ndata: {_openai_chunk('He')}\n\n".encode(),
        b":\n\n",
        f"data: {_openai_chunk('llo')}\n\ndata: {OPENAI_USAGE}\n\ndata: [DONE]\n\n".encode(),
    ],
    "crlf-line-endings": [
        f"data: {_openai_chunk('He')}\r\n\r\ndata: {_openai_chunk('llo')}\r\n\r\n".encode(),
        f"data: {OPENAI_USAGE}\r\n\r\ndata: [DONE]\r\n\r\n".encode(),
    ],
    "utf8-bom": [
        b"\xef\xbb\xbf"
        + f"data: {_openai_chunk('He')}\n\ndata: {_openai_chunk('llo')}\n\n".encode(),
        f"data: {OPENAI_USAGE}\n\ndata: [DONE]\n\n".encode(),
    ],
    "utf8-bom-split-across-reads": [
        b"\xef",
        b"\xbb\xbf" + f"data: {_openai_chunk('He')}\n\ndata: {_openai_chunk('llo')}\n\n".encode(),
        f"data: {OPENAI_USAGE}\n\ndata: [DONE]\n\n".encode(),
    ],
    "lone-cr-line-endings": [
        f"data: {_openai_chunk('He')}\r\rdata: {_openai_chunk('llo')}\r\r".encode(),
        f"data: {OPENAI_USAGE}\r\rdata: [DONE]\r\r".encode(),
    ],
    "crlf-split-between-reads": [
        # One event of two data lines: were a CR at the end of a read and the LF
        # opening the next taken for two line ends, it would end half way.
        b'data: {"choices": [{"index": 0,\r',
        b'\ndata: "delta": {"content": "He"}}]}\r\n\r',
        f"\ndata: {_openai_chunk('llo')}\r\n\r\ndata: {OPENAI_USAGE}\r\n\r\n".encode(),
        b"data: [DONE]\r\n\r\n",
    ],
    "no-space-after-colon": [
        f"data:{_openai_chunk('He')}\n\ndata:{_openai_chunk('llo')}\n\n".encode(),
        f"data:{OPENAI_USAGE}\n\ndata:[DONE]\n\n".encode(),
    ],
}


@pytest.mark.parametrize("pieces", OPENAI_EDGE_CASES.values(), ids=OPENAI_EDGE_CASES.keys())
async def test_openai_stream_survives_sse_edge_cases(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession, pieces: list[bytes]
) -> None:
    upstream.default = Script(raw_sse=pieces)

    texts, end = await _collect(_provider(config, session, "gpt-fake"))

    assert "".join(texts) == "Hello"
    assert end.usage == Usage(4, 2)


async def test_openai_stream_without_done_is_an_upstream_failure(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    upstream.default = Script(raw_sse=[f"data: {_openai_chunk('He')}\n\n".encode()])

    with pytest.raises(UpstreamError) as caught:
        await _collect(_provider(config, session, "gpt-fake"))

    assert caught.value.kind is UpstreamErrorKind.UNAVAILABLE


def _anthropic_event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


ANTHROPIC_STREAM = "".join(
    [
        _anthropic_event("message_start", {"message": {"usage": {"input_tokens": 7}}}),
        _anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text"}}),
        _anthropic_event("ping", {}),
        _anthropic_event("content_block_delta", {"delta": {"type": "text_delta", "text": "He"}}),
        _anthropic_event("content_block_delta", {"delta": {"type": "text_delta", "text": "llo"}}),
        _anthropic_event("content_block_stop", {"index": 0}),
        _anthropic_event(
            "message_delta", {"delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 2}}
        ),
        _anthropic_event("message_stop", {}),
    ]
).encode()


@pytest.mark.parametrize(
    "pieces",
    [
        [ANTHROPIC_STREAM],
        [ANTHROPIC_STREAM[i : i + 7] for i in range(0, len(ANTHROPIC_STREAM), 7)],
        [ANTHROPIC_STREAM.replace(b"\n", b"\r\n")],
    ],
    ids=["one-read", "split-every-7-bytes", "crlf"],
)
async def test_anthropic_stream_reads_usage_from_start_and_delta(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession, pieces: list[bytes]
) -> None:
    upstream.default = Script(raw_sse=pieces)

    texts, end = await _collect(_provider(config, session, "claude-fake"))

    assert texts == ["He", "llo"]
    assert end == StreamEnd(FinishReason.LENGTH, Usage(7, 2))


async def test_anthropic_overloaded_status_is_unavailable(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    upstream.default = Script(status=529, error_body='{"type":"error"}')

    with pytest.raises(UpstreamError) as caught:
        await _provider(config, session, "claude-fake").complete(REQUEST)

    assert caught.value.kind is UpstreamErrorKind.UNAVAILABLE
    assert caught.value.http_status == 529


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("12", 12.0),
        ("0.5", 0.5),
        ("", None),
        ("soon", None),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ],
)
def test_retry_after_parses_seconds_and_dates(header: str, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


async def test_a_slow_consumer_is_not_taken_for_an_idle_upstream(
    upstream: FakeUpstream, config_data: dict[str, Any], session: aiohttp.ClientSession
) -> None:
    """The idle timeout measures the upstream: time an event spends with its
    consumer does not count, even when every event has already arrived."""
    config_data["models"]["gpt-fake"]["idle_timeout_s"] = 0.1
    # One TCP write per event: each is read while the consumer holds the one before.
    events = [f"data: {_openai_chunk(text)}\n\n".encode() for text in ("He", "l", "lo")]
    upstream.default = Script(
        raw_sse=[*events, f"data: {OPENAI_USAGE}\n\ndata: [DONE]\n\n".encode()]
    )
    provider = _provider(to_config(config_data), session, "gpt-fake")

    texts: list[str] = []
    async for item in provider.stream(REQUEST):
        if isinstance(item, str):
            texts.append(item)
            await asyncio.sleep(0.25)  # the consumer is slower than the idle timeout

    assert "".join(texts) == "Hello"


@pytest.mark.parametrize(("line_bytes", "fits"), [(900, True), (1100, False)])
async def test_one_sse_event_may_hold_at_most_max_response_bytes(
    upstream: FakeUpstream,
    config_data: dict[str, Any],
    session: aiohttp.ClientSession,
    line_bytes: int,
    fits: bool,
) -> None:
    config_data["models"]["gpt-fake"]["max_response_bytes"] = 1024
    text = "x" * (line_bytes - len(f"data: {_openai_chunk('')}\n"))
    event = f"data: {_openai_chunk(text)}\n\n".encode()
    # The long event arrives in pieces, as a long line would.
    pieces = [event[i : i + 100] for i in range(0, len(event), 100)]
    upstream.default = Script(
        raw_sse=[*pieces, f"data: {OPENAI_USAGE}\n\ndata: [DONE]\n\n".encode()]
    )
    provider = _provider(to_config(config_data), session, "gpt-fake")

    if fits:
        texts, _ = await _collect(provider)
        assert texts == [text]
    else:
        with pytest.raises(UpstreamError) as caught:
            await _collect(provider)
        assert caught.value.kind is UpstreamErrorKind.OVERSIZED


async def _finish(provider: Provider, *, stream: bool) -> tuple[FinishReason, str]:
    """The finish reason of an answer, whole or streamed, and its refusal."""
    if stream:
        _, end = await _collect(provider)
        return end.finish_reason, ""
    completion = await provider.complete(REQUEST)
    return completion.finish_reason, completion.refusal


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.REFUSAL),
        ("pause_turn", FinishReason.PAUSE_TURN),
        ("model_context_window_exceeded", FinishReason.CONTEXT_WINDOW_EXCEEDED),
        ("a_reason_added_later", FinishReason.UNSPECIFIED),
    ],
)
async def test_each_anthropic_stop_reason_maps_as_the_proto_documents(
    upstream: FakeUpstream,
    config: Config,
    session: aiohttp.ClientSession,
    stop_reason: str,
    expected: FinishReason,
    stream: bool,
) -> None:
    upstream.default = Script(stop_reason=stop_reason)

    finish = await _finish(_provider(config, session, "claude-fake"), stream=stream)

    assert finish == (expected, "")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("tool_calls", FinishReason.TOOL_CALLS),
        ("function_call", FinishReason.TOOL_CALLS),
        ("a_reason_added_later", FinishReason.UNSPECIFIED),
    ],
)
async def test_each_openai_finish_reason_maps_as_the_proto_documents(
    upstream: FakeUpstream,
    config: Config,
    session: aiohttp.ClientSession,
    finish_reason: str,
    expected: FinishReason,
    stream: bool,
) -> None:
    """The fake sends `refusal: null` on every answer, as OpenAI does: only a
    non-null one is a refusal."""
    upstream.default = Script(finish_reason=finish_reason)

    finish = await _finish(_provider(config, session, "gpt-fake"), stream=stream)

    assert finish == (expected, "")


async def test_an_openai_refusal_is_refusal_with_its_text(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    """OpenAI ends a refusal with "stop": its non-null `refusal` tells it apart."""
    upstream.default = Script(refusal="I can't help with that.", finish_reason="stop")

    completion = await _provider(config, session, "gpt-fake").complete(REQUEST)

    assert completion.finish_reason is FinishReason.REFUSAL
    assert completion.refusal == "I can't help with that."
    assert completion.text == ""


async def test_a_streamed_openai_refusal_ends_as_refusal(
    upstream: FakeUpstream, config: Config, session: aiohttp.ClientSession
) -> None:
    upstream.default = Script(chunks=[], refusal="I can't help with that.", finish_reason="stop")

    texts, end = await _collect(_provider(config, session, "gpt-fake"))

    assert texts == []
    assert end.finish_reason is FinishReason.REFUSAL
