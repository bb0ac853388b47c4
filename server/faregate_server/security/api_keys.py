"""API keys: how they look, how they are stored, how one is checked.

A key is `fg_<key id>_<secret>`. The key id is public (it appears in the
config and may appear in logs) and finds the stored entry in one lookup;
the secret never leaves the agent. The config stores only
`hmac-sha256:<key id>:<salt>:<digest>`, the digest being HMAC-SHA256 of the
secret under a random per-key salt.

A fast keyed hash is the right tool here, not a slow password hash: the
secret is 256 random bits, so there is nothing to brute-force, and the check
runs on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

_PREFIX = "fg"
_SCHEME = "hmac-sha256"
_KEY_ID_BYTES = 6
_SECRET_BYTES = 32
_SALT_BYTES = 16


@dataclass(frozen=True, slots=True)
class ApiKeyHash:
    """A stored API key: its public id and a salted digest of its secret part."""

    key_id: str
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)


# Compared against when a key id is unknown, so that path costs the same.
_DECOY = ApiKeyHash("", b"\0" * _SALT_BYTES, b"\0" * hashlib.sha256().digest_size)


class KeyFormatError(ValueError):
    """A stored key entry is malformed; the message says how."""


def new_api_key() -> tuple[str, ApiKeyHash]:
    """A fresh key and the entry to store for it."""
    key_id = secrets.token_hex(_KEY_ID_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"{_PREFIX}_{key_id}_{secret}", ApiKeyHash(key_id, salt, _digest(salt, secret))


def format_key_hash(stored: ApiKeyHash) -> str:
    return f"{_SCHEME}:{stored.key_id}:{stored.salt.hex()}:{stored.digest.hex()}"


def parse_key_hash(text: str) -> ApiKeyHash:
    """Reads a stored entry written by `format_key_hash`.

    Raises:
        KeyFormatError: it is not one.
    """
    parts = text.split(":")
    if len(parts) != 4 or parts[0] != _SCHEME:
        raise KeyFormatError(f"must look like {_SCHEME}:<key id>:<salt>:<digest>")
    _, key_id, salt, digest = parts
    try:
        stored = ApiKeyHash(key_id, bytes.fromhex(salt), bytes.fromhex(digest))
    except ValueError:
        raise KeyFormatError("salt and digest must be hexadecimal") from None
    if not key_id or len(stored.digest) != hashlib.sha256().digest_size:
        raise KeyFormatError("has an empty key id or a digest of the wrong length")
    return stored


def key_id_of(key: str) -> str | None:
    """The id part of a presented key, or None when it is not shaped like one."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != _PREFIX or not key_id or not secret:
        return None
    return key_id


def matches(key: str, stored: ApiKeyHash | None) -> bool:
    """Whether `key` is the key `stored` was made from, in time independent of
    where they differ (and of whether `stored` exists at all)."""
    secret = key.split("_", 2)[-1]
    entry = stored or _DECOY
    same = hmac.compare_digest(_digest(entry.salt, secret), entry.digest)
    return same and stored is not None


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()
