"""API keys: the stored form round-trips, and only the key it was made from matches."""

from __future__ import annotations

import subprocess
import sys

import pytest
from faregate_server.security.api_keys import (
    KeyFormatError,
    format_key_hash,
    key_id_of,
    matches,
    new_api_key,
    parse_key_hash,
)


def test_a_new_key_matches_its_stored_hash_and_nothing_else() -> None:
    key, stored = new_api_key()
    other_key, other = new_api_key()

    assert parse_key_hash(format_key_hash(stored)) == stored
    assert key_id_of(key) == stored.key_id
    assert matches(key, stored)
    assert not matches(other_key, stored)
    assert not matches(key, other)
    assert not matches(key[:-1] + ("A" if key[-1] != "A" else "B"), stored)
    assert not matches(key, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hmac-sha256:id:00:00",  # digest of the wrong length
        "hmac-sha256::" + "00" * 16 + ":" + "00" * 32,  # no key id
        "hmac-sha256:id:zz:" + "00" * 32,
        "sha256:id:00:" + "00" * 32,
    ],
)
def test_malformed_stored_keys_are_refused(text: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_key_hash(text)


@pytest.mark.parametrize("key", ["", "fg_", "fg__secret", "fg_id_", "sk_id_secret", "plain"])
def test_keys_of_the_wrong_shape_have_no_id(key: str) -> None:
    assert key_id_of(key) is None


def test_the_command_line_prints_a_key_and_the_hash_that_matches_it() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "faregate_server", "new-api-key"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    key = printed[0].removeprefix("key:").strip()
    stored = parse_key_hash(printed[1].removeprefix("hash:").strip())

    assert matches(key, stored)
