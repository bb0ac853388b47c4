"""What an upstream says in an error reaches the caller only as a short,
redacted excerpt: no configured secret (any model's API key) and nothing that
looks like a credential, in the status message or any ErrorInfo metadata
value. The body goes to the log, redacted too."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
import yaml
from faregate_client import FaregateError, InvalidArgument, StreamInterrupted, Unavailable
from faregate_server.config.load import parse_config
from faregate_server.upstream.providers.base import ERROR_BODY_BYTES

from tests.conftest import TEST_ENV, Faregate, StartFaregate, read_stream
from tests.fakes.upstream import FakeUpstream, Script

CREDENTIAL_LOOKING = {
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z": "an OpenAI project key",
    "sk-ant-api03-Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp": "an Anthropic key",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC0xIn0.c2lnbmF0dXJlLXZhbHVl": "a JWT",
    "live_8f7e6d5c4b3a29180716": "an api_key= value",
    "k-7f3e9a1b": "an x-api-key header value",
    "AKIAIOSFODNN7EXAMPLE": "an AWS access key id",
    "Zx9vQ2mN8pL4kR7tY1wE5uI3oA6sD0fGhJkLp": "a long random token",
    "hunter2-but-longer": "a password= value",
}
# Every model's key is a configured secret: gpt-fake's own reaches its
# upstream in the Authorization header; claude-fake's appears as if leaked.
SECRETS = [*TEST_ENV.values(), *CREDENTIAL_LOOKING]
ERROR_BODY = (
    "the request was malformed. Debug: api_key=live_8f7e6d5c4b3a29180716 "
    "x-api-key: k-7f3e9a1b Authorization: Bearer "
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC0xIn0.c2lnbmF0dXJlLXZhbHVl "
    "keys seen: sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z, "
    "sk-ant-api03-Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp, AKIAIOSFODNN7EXAMPLE, "
    "Zx9vQ2mN8pL4kR7tY1wE5uI3oA6sD0fGhJkLp; password=hunter2-but-longer; "
    f"other tenant's key {TEST_ENV['FAKE_ANTHROPIC_KEY']}"
)


def _assert_no_secret(error: FaregateError) -> None:
    for secret in SECRETS:
        assert secret not in error.message
        for key, value in error.metadata.items():
            assert secret not in value, key


def _assert_no_secret_logged(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        for secret in SECRETS:
            assert secret not in record.getMessage(), record.name


async def _fail(faregate: Faregate, rpc: str) -> FaregateError:
    request: dict[str, Any] = {"budget_key": "team", "model": "gpt-fake"}
    if rpc == "route":
        with pytest.raises(FaregateError) as caught:
            await faregate.client.route("hi", **request)
    else:
        with pytest.raises(FaregateError) as caught:
            await read_stream(faregate.client.stream_route("hi", **request))
    return caught.value


@pytest.mark.parametrize("rpc", ["route", "stream"])
async def test_an_upstream_400_echoing_headers_and_credentials_reaches_the_caller_redacted(
    faregate: Faregate, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture, rpc: str
) -> None:
    upstream.default = Script(status=400, error_body=ERROR_BODY, echo_headers=True)
    caplog.set_level(logging.INFO)

    error = await _fail(faregate, rpc)

    assert isinstance(error, InvalidArgument)
    assert error.reason == "UPSTREAM_REJECTED"
    # The echo did carry the key: it is the redaction that keeps it from the caller.
    assert upstream.received[-1].headers["Authorization"] == "Bearer sk-test-openai"
    assert "the request was malformed" in error.message
    assert "[REDACTED]" in error.message
    assert len(error.message) < 400
    _assert_no_secret(error)
    [logged] = [r for r in caplog.records if "upstream answered HTTP 400" in r.getMessage()]
    assert logged.levelno == logging.WARNING
    # The log has the whole body (the excerpt does not reach its end), redacted.
    assert "other tenant's key [REDACTED]" in logged.getMessage()
    _assert_no_secret_logged(caplog)
    assert await faregate.reserved_nano_usd() == 0


@pytest.mark.parametrize(
    ("model", "after", "error_type"),
    [
        ("gpt-fake", 0, Unavailable),
        ("gpt-fake", 1, StreamInterrupted),
        ("claude-fake", 0, Unavailable),
    ],
    ids=["openai-before-output", "openai-after-output", "anthropic-before-output"],
)
async def test_an_in_stream_error_event_reaches_the_caller_redacted(
    faregate: Faregate,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    model: str,
    after: int,
    error_type: type[FaregateError],
) -> None:
    upstream.default = Script(error_event_after=after, error_event_message=ERROR_BODY)
    caplog.set_level(logging.INFO)

    with pytest.raises(error_type) as caught:
        await read_stream(faregate.client.stream_route("hi", budget_key="team", model=model))

    assert "the request was malformed" in caught.value.message
    _assert_no_secret(caught.value)
    _assert_no_secret_logged(caplog)
    assert await faregate.reserved_nano_usd() == 0


async def test_a_secret_added_by_a_reload_is_redacted_from_models_kept_across_it(
    faregate: Faregate, upstream: FakeUpstream, config_data: dict[str, Any]
) -> None:
    secret = "plain-words-only-key"  # no credential shape: only the config names it
    reloaded = copy.deepcopy(config_data)
    reloaded["models"]["new-fake"] = {**config_data["models"]["cheap-fake"], "api_key_env": "NEW"}
    faregate.running.reloader.apply(
        parse_config(yaml.safe_dump(reloaded), env={**TEST_ENV, "NEW": secret})
    )
    upstream.default = Script(status=400, error_body=f"bad request; keys seen: {secret}")

    error = await _fail(faregate, "route")  # gpt-fake, unchanged by the reload

    assert error.reason == "UPSTREAM_REJECTED"
    assert "keys seen: [REDACTED]" in error.message


@pytest.mark.parametrize("rpc", ["route", "stream"])
async def test_a_secret_crossing_the_error_body_cut_leaves_no_piece_behind(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    rpc: str,
) -> None:
    """The body is redacted before it is cut to ERROR_BODY_BYTES, not after:
    a configured secret that starts just before the cut goes whole. The
    filler is whitespace, which the excerpt squeezes, so the caller's
    message reaches the cut too."""
    secret = "plain-words-only-secret-key"  # no credential shape: only the config names it
    config_data["models"]["gpt-fake"]["api_key_env"] = "PLAIN_KEY"
    config = parse_config(yaml.safe_dump(config_data), env={**TEST_ENV, "PLAIN_KEY": secret})
    text = "\n" * (ERROR_BODY_BYTES - 12) + secret
    if rpc == "route":
        upstream.default = Script(status=400, error_body=text)
    else:
        upstream.default = Script(error_event_after=0, error_event_message=text)
    caplog.set_level(logging.INFO)
    async with start_faregate(config) as faregate:
        error = await _fail(faregate, rpc)

    pieces = {secret[i : i + 8] for i in range(len(secret) - 7)}
    logged = [record.getMessage() for record in caplog.records]
    assert [p for p in pieces if p in error.message or any(p in line for line in logged)] == []
    assert "[REDACTED]" in error.message


async def test_an_error_body_is_logged_on_one_line_with_its_control_characters_escaped(
    faregate: Faregate, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "bad request\r\nINFO faregate: budget team reset\x1b[2K"
    upstream.default = Script(status=400, error_body=forged)
    caplog.set_level(logging.INFO)

    await _fail(faregate, "route")

    [logged] = [r.getMessage() for r in caplog.records if "upstream answered" in r.getMessage()]
    assert logged.endswith(r"bad request\x0d\x0aINFO faregate: budget team reset\x1b[2K")
    assert not any(ord(c) < 0x20 for c in logged)
