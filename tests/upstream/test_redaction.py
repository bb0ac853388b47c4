"""The redactor on its own: configured secrets and credential shapes go,
ordinary error text stays, and excerpts are cut only after redaction."""

from __future__ import annotations

from typing import Any

import pytest
from faregate_server.upstream.redaction import REDACTED, Redactor, config_secrets, excerpt

from tests.conftest import to_config

CREDENTIALS = [
    pytest.param("Authorization: Bearer abc.def-ghi", "Authorization: " + REDACTED, id="header"),
    pytest.param(
        '"authorization": "Basic dXNlcjpwYXNz"', '"authorization": "' + REDACTED + '"', id="basic"
    ),
    pytest.param("'x-api-key': 'k-123'", "'x-api-key': '" + REDACTED + "'", id="x-api-key"),
    pytest.param("?api_key=abc&model=m", "?api_key=" + REDACTED + "&model=m", id="query"),
    pytest.param("token: t0k3n", "token: " + REDACTED, id="token-field"),
    pytest.param("bearer xyz123", REDACTED, id="bare-bearer"),
    pytest.param("key sk-proj-AbCdEf123456", "key " + REDACTED, id="openai-key"),
    pytest.param("key sk-ant-api03-abcdefgh", "key " + REDACTED, id="anthropic-key"),
    pytest.param("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", REDACTED, id="jwt"),
    pytest.param("AKIAIOSFODNN7EXAMPLE", REDACTED, id="aws"),
    pytest.param("ghp_abcdefghijklmnopqrstuvwxyz0123", REDACTED, id="github"),
    pytest.param(
        "redis://user:pa55@host:6379/0", "redis://" + REDACTED + "host:6379/0", id="url-userinfo"
    ),
    pytest.param("id Zx9vQ2mN8pL4kR7tY1wE5uI3oA6sD0fGhJ", "id " + REDACTED, id="long-random"),
    pytest.param(
        "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY----- after",
        REDACTED + " after",
        id="pem",
    ),
]


@pytest.mark.parametrize(("text", "redacted"), CREDENTIALS)
def test_credential_shapes_are_redacted(text: str, redacted: str) -> None:
    assert Redactor().redact(text) == redacted


def test_a_url_password_after_a_long_run_of_scheme_characters_is_redacted() -> None:
    """The scheme's run is bounded (so "a.a.a.…" costs linear time, not
    quadratic), and a URL at the end of such a run is still found."""
    text = "a." * 4096 + "redis://user:pw@host"

    assert Redactor().redact(text) == "a." * 4096 + "redis://" + REDACTED + "host"


ORDINARY = [
    '{"error": {"message": "max_tokens is too large: 100000", "type": "invalid_request_error"}}',
    "model 'claude-3-5-sonnet-20241022' not found",
    "see https://platform.openai.com/docs/guides/error-codes for details",
    "prompt_tokens: 4, completion_tokens: 2",
    "a" * 40 + " is a long word, 1234567890123456789012345678901234 a long number",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_error_text_is_kept(text: str) -> None:
    assert Redactor().redact(text) == text


def test_configured_secrets_are_redacted_verbatim_longest_first() -> None:
    redactor = Redactor(["plainword", "plainword-extended", "abc"])

    assert redactor.redact("x plainword-extended y plainword z abc") == (
        f"x {REDACTED} y {REDACTED} z abc"  # a 3-character secret would match everywhere
    )


def test_an_excerpt_is_cut_after_redaction_so_no_secret_is_half_kept() -> None:
    secret = "sk-test-openai-0123456789"
    text = "x" * 290 + " " + secret + " tail"

    cut = Redactor([secret]).excerpt(text, 300)

    assert "sk-" not in cut
    assert cut.endswith("…")
    assert len(cut) == 301


def test_a_head_is_redacted_before_it_is_cut() -> None:
    redactor = Redactor(["plainword-secret"])

    assert redactor.redact_head("abcdef plainword-secret tail", 10) == "abcdef " + REDACTED
    assert redactor.redact_head("abcdef sk-proj-AbCdEf123456 tail", 10) == "abcdef " + REDACTED
    assert redactor.redact_head("abcdef ghij plainword-secret", 10) == "abcdef ghi"
    assert redactor.margin_bytes == len("plainword-secret") + 1024


def test_an_excerpt_is_one_line() -> None:
    assert excerpt("a\n\n  b\r\n\tc", 100) == "a b c"


def test_the_config_secrets_are_every_model_key_and_url_password(
    config_data: dict[str, Any],
) -> None:
    config_data["state"] = {"backend": "redis", "redis": {"url": "redis://:r3dis-pw@h:6379/0"}}
    config_data["telemetry"]["otlp_endpoint"] = "https://u:otlp-pw@collector:4317"

    secrets = config_secrets(to_config(config_data))

    assert secrets == {"sk-test-openai", "sk-ant-test", "r3dis-pw", "otlp-pw"}
