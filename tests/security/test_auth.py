"""The Authenticator on its own: a key that passed its check is remembered
only until a reconfigure, and a key that did not always pays the HMAC."""

from __future__ import annotations

import hmac
from typing import Any, cast

import grpc
import pytest
import yaml
from faregate_server.clock import SystemClock
from faregate_server.config.load import parse_config
from faregate_server.config.schema import AuthConfig
from faregate_server.errors import CredentialInvalid
from faregate_server.security.api_keys import format_key_hash, new_api_key
from faregate_server.security.auth import Authenticator


class _Call:
    """The one thing `authenticate` asks of a gRPC call: its metadata."""

    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def _call(key: str) -> grpc.aio.ServicerContext[Any, Any]:
    return cast("grpc.aio.ServicerContext[Any, Any]", _Call(key))


def _auth(*stored: str) -> AuthConfig:
    data = {
        "models": {"m": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}},
        "server": {"default_route": "m"},
        "auth": {
            "enabled": True,
            "principals": {"agent": {"api_keys": list(stored), "budgets": "*", "models": "*"}},
        },
    }
    return parse_config(yaml.safe_dump(data)).auth


@pytest.fixture
def hmacs(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The salt of every HMAC computed from now on."""
    salts: list[bytes] = []
    real_new = hmac.new

    def counting_new(key: bytes, msg: bytes | None = None, digestmod: Any = "") -> hmac.HMAC:
        salts.append(key)
        return real_new(key, msg, digestmod)

    monkeypatch.setattr(hmac, "new", counting_new)
    return salts


def test_a_checked_key_is_remembered_until_a_reconfigure(hmacs: list[bytes]) -> None:
    key, stored = new_api_key()
    authenticator = Authenticator(_auth(format_key_hash(stored)), SystemClock())
    hmacs.clear()  # new_api_key computed one
    first = authenticator.authenticate(_call(key))
    again = authenticator.authenticate(_call(key))
    assert first is again
    assert first.name == "agent"
    assert len(hmacs) == 1

    new_key, new_stored = new_api_key()
    authenticator.reconfigure(_auth(format_key_hash(new_stored)))
    with pytest.raises(CredentialInvalid):
        authenticator.authenticate(_call(key))
    assert authenticator.authenticate(_call(new_key)).name == "agent"


def test_a_key_that_failed_pays_the_hmac_every_time(hmacs: list[bytes]) -> None:
    key, stored = new_api_key()
    authenticator = Authenticator(_auth(format_key_hash(stored)), SystemClock())
    hmacs.clear()  # new_api_key computed one
    wrong_secret = f"fg_{key.split('_')[1]}_{'x' * 43}"
    for presented in (wrong_secret, wrong_secret, "fg_000000000000_" + "x" * 43, "x" * 43):
        with pytest.raises(CredentialInvalid):
            authenticator.authenticate(_call(presented))
    # Under the key's own salt for its id, the decoy's for the others.
    assert [salt == stored.salt for salt in hmacs] == [True, True, False, False]
