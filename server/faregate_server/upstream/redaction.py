"""Scrubbing credentials out of text that came from an upstream.

An upstream's error body is written by someone else and may echo what it was
sent, faregate's API key included. Before any of it reaches a caller or a log
line, a `Redactor` replaces two kinds of text with `[REDACTED]`:
- every secret the config holds, verbatim: each model's API key, and the
  passwords of the Redis and OTLP URLs;
- anything that looks like a credential: `Bearer …`, `sk-…` (OpenAI,
  `sk-ant-…` Anthropic), JWTs, AWS/GitHub/Slack/Google key shapes, private-key
  PEM blocks, the user:password of a URL, the value of an `Authorization`,
  `x-api-key`, `api_key`, `token`, `secret` or `password` field or header
  echo, and any run of 32 or more letters, digits and `_+=-` that mixes
  letters and digits (a long random token).

Invariants: redaction runs before any cut, on the text kept plus
`margin_bytes` (the longest configured secret, and 1 KiB) past it, so no
secret survives half-cut at the edge of what is kept; the patterns are
compiled once per config, and only failing calls pay for them. The cost is
linear in the text, crafted text included (about 0.3 ms per KiB of ordinary
text, under 1 ms per KiB at worst): a run that may start anywhere inside a
longer run of its own characters (a URL scheme inside "a.a.a.…") is bounded,
so no start scans the rest of the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from faregate_server.config.schema import Config

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 4
"""Configured secrets shorter than this are not searched for verbatim: they
would match ordinary text everywhere (and are too weak to protect anything)."""
_CREDENTIAL_MARGIN_BYTES = 1 << 10
"""Room past a cut for a credential shape that starts before it (a key, a JWT)."""

_CREDENTIAL_PATTERNS = (
    # A private key in PEM, to its end line (or the end of the text, if cut).
    r"(?P<pem>-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z))",
    # A field or header echo: the name and separator stay, the value goes,
    # with its scheme ("Authorization: Bearer sk-…", "api_key=…", '"token": "…"').
    r"(?P<field>(?i:\b(?:proxy-)?authorization|\bx-(?:goog-)?api-key|\bapi[-_]?key"
    r"|\baccess[-_]?token|\brefresh[-_]?token|\bclient[-_]?secret|\bsecret|\bpassword"
    r"|\bpasswd|\btoken)[\"']?\s*[:=]\s*[\"']?)(?i:(?:bearer|basic|token)\s+)?[^\s\"',;}&]+",
    r"(?i:\bbearer\s+)[A-Za-z0-9._~+/=-]+",
    r"\bsk-[A-Za-z0-9_-]{8,}",
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    r"\bAIza[0-9A-Za-z_-]{30,}",
    # The user:password part of a URL; the scheme stays. The scheme's length
    # is bounded: `\b` holds after every "." of "a.a.a.…", and an unbounded
    # run would scan the rest of such a text from each of them.
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)[^/\s:@]*:[^/\s@]+@",
    # A long run that mixes letters and digits: checked in `_replace`.
    r"(?P<long>[A-Za-z0-9_+=-]{32,})",
)


class Redactor:
    """Replaces configured secrets and credential-looking strings with `[REDACTED]`."""

    __slots__ = ("_pattern", "margin_bytes", "secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(s for s in secrets if len(s) >= MIN_SECRET_CHARS)
        """The configured secrets searched for verbatim."""
        longest = max((len(s.encode()) for s in self.secrets), default=0)
        self.margin_bytes = longest + _CREDENTIAL_MARGIN_BYTES
        """How much text past a cut redaction must see (in bytes, or characters)
        so that a secret or credential starting before the cut is seen whole."""
        # Longest first: a secret that contains another is removed whole.
        literal = [re.escape(s) for s in sorted(self.secrets, key=len, reverse=True)]
        self._pattern = re.compile("|".join((*literal, *_CREDENTIAL_PATTERNS)), re.DOTALL)

    def redact(self, text: str) -> str:
        """`text` with every secret and credential-looking string replaced."""
        return self._pattern.sub(_replace, text)

    def redact_head(self, text: str, limit_chars: int) -> str:
        """The first `limit_chars` of `text`, redacted before the cut: a secret
        or credential starting before it goes whole, however far past it it
        reaches. Pass `margin_bytes` more of the text than you keep, so that
        one crossing the cut is seen whole."""
        pieces: list[str] = []
        kept = 0
        for match in self._pattern.finditer(text):
            start = match.start()
            if start >= limit_chars:
                break
            pieces.append(text[kept:start])
            pieces.append(_replace(match))
            kept = match.end()
        pieces.append(text[kept:limit_chars])
        return "".join(pieces)

    def excerpt(self, text: str, limit_chars: int) -> str:
        """A redacted, single-line excerpt of `text`, at most `limit_chars` long (plus "…")."""
        return excerpt(self.redact(text), limit_chars)


def excerpt(text: str, limit_chars: int) -> str:
    """`text` on one line (runs of whitespace and line breaks made one space), cut
    to `limit_chars` with "…" when longer. Redact before cutting, never after."""
    flat = " ".join(text.split())
    if len(flat) <= limit_chars:
        return flat
    return flat[:limit_chars] + "…"


def _replace(match: re.Match[str]) -> str:
    group = match.lastgroup
    if group == "field" or group == "scheme":
        return match.group(group) + REDACTED
    if group == "long":
        token = match.group(group)
        if not (any(c.isdigit() for c in token) and any(c.isalpha() for c in token)):
            return token  # a long word or a run of digits, not a random token
    return REDACTED


def config_secrets(config: Config) -> frozenset[str]:
    """Every secret the config holds in clear: what a Redactor must remove verbatim."""
    secrets = {model.api_key for model in config.models.values() if model.api_key}
    for url in (config.state.redis.url, config.telemetry.otlp_endpoint):
        password = _url_password(url)
        if password:
            secrets.add(password)
    return frozenset(secrets)


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None
