"""The `auth` section: who may call faregate, with which credentials, and what they may use.

Stored API keys are salted digests (`faregate new-api-key` prints one); certificate
subjects are distinguished names as RFC 4514 writes them, compared in any spelling.
No two principals share a key id or a subject, and auth that is on has at least one
credential (`credential_problems`). That a principal's grants name configured
budgets, routes and models, and that certificate subjects come with mutual TLS,
are rules between sections (`faregate_server.config.schema`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ModelWrapValidatorHandler, model_validator

from faregate_server.config.fields import (
    A_LIST,
    SECTION,
    Boolean,
    FromKey,
    Integer,
    Name,
    Number,
    Text,
    keyed,
    no_default_shown,
)
from faregate_server.config.problems import Loc, problem
from faregate_server.security.api_keys import ApiKeyHash, KeyFormatError, parse_key_hash
from faregate_server.security.distinguished_names import parse_subject

MAX_REQUESTS_PER_S = 1e9
"""The highest rate a principal may be given; its default burst is the rate
rounded up, an integer token bucket."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Names a principal may use: some, or every one ("*")."""

    names: frozenset[str] = frozenset()
    everything: bool = False

    def allows(self, name: str) -> bool:
        return self.everything or name in self.names


def _grant(value: Any) -> Grant:
    if value == "*":
        return Grant(everything=True)
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise problem('must be a list of names or "*"')
    return Grant(frozenset(value))


GrantField = Annotated[
    Grant, BeforeValidator(_grant, json_schema_input_type=Literal["*"] | list[str])
]
"""A list of names, or "*" for every one (later ones included)."""


def _stored_key(value: Any) -> ApiKeyHash:
    try:
        return parse_key_hash(value if isinstance(value, str) else "")
    except KeyFormatError as error:
        raise problem(str(error)) from None


StoredKey = Annotated[ApiKeyHash, BeforeValidator(_stored_key, json_schema_input_type=str)]
"""A stored key hash, as `faregate new-api-key` prints it."""


def _subject(subject: str) -> str:
    if not subject:
        raise problem("must be a non-empty string")
    try:
        parse_subject(subject)
    except ValueError as error:
        raise problem(f"{subject!r} is not a distinguished name: {error}") from None
    return subject


Subject = Annotated[str, Text(), AfterValidator(_subject)]
"""A distinguished name as grpc reports it, e.g. "O=Acme,CN=agent-1"."""


@dataclass(frozen=True, slots=True)
class PrincipalConfig:
    """Someone who may call faregate, and what they may do."""

    __pydantic_config__ = SECTION

    name: FromKey
    api_keys: Annotated[tuple[StoredKey, ...], A_LIST] = ()
    """Stored hashes of its API keys (`faregate new-api-key`)."""
    certificate_subjects: Annotated[tuple[Subject, ...], A_LIST] = ()
    """Verified client-certificate subjects (mutual TLS) that stand for it when
    a call carries no API key, as grpc reports them: "O=Acme,CN=agent-1"."""
    budgets: GrantField = Grant()
    """Budgets its requests may spend from (every one of a request's keys)."""
    routes: GrantField = Grant()
    """Routes it may name, the default route included when `model` is empty."""
    models: GrantField = Grant()
    """Models it may name directly, bypassing routes."""
    requests_per_s: Annotated[float, Number(0, MAX_REQUESTS_PER_S)] = 0.0
    """Its sustained request rate on each replica; 0 means no limit (at most 1e9)."""
    burst: Annotated[int, Integer(1), no_default_shown] = 1
    """Requests it may send at once above the rate; defaults to requests_per_s
    rounded up, and at least 1."""
    max_concurrent: Annotated[int, Integer(0)] = 0
    """Requests (streams included) it may have open at once on each replica; 0 means no cap."""
    admin: Annotated[bool, Boolean()] = False
    """Whether it may call the AdminService."""

    @model_validator(mode="wrap")
    @classmethod
    def _default_burst(
        cls, data: Any, handler: ModelWrapValidatorHandler[PrincipalConfig]
    ) -> PrincipalConfig:
        principal = handler(data)
        if isinstance(data, Mapping) and "burst" not in data:
            burst = max(1, math.ceil(principal.requests_per_s))
            return dataclasses.replace(principal, burst=burst)
        return principal


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may call faregate."""

    __pydantic_config__ = SECTION

    enabled: Annotated[bool, Boolean()] = True
    """Every RouterService and AdminService call must carry a credential
    (health and reflection stay open for probes and grpcurl)."""
    principals: Annotated[Mapping[Annotated[str, Name()], PrincipalConfig], keyed()] = field(
        default_factory=dict
    )
    """Who may call, by name."""


def credential_problems(auth: AuthConfig) -> list[tuple[Loc, str]]:
    """What breaks the rules between the principals' credentials (places below `auth`)."""
    key_ids = [key.key_id for p in auth.principals.values() for key in p.api_keys]
    subjects = [subject for p in auth.principals.values() for subject in p.certificate_subjects]
    problems: list[tuple[Loc, str]] = []
    if len(key_ids) != len(set(key_ids)):
        problems.append((("principals",), "two API keys share a key id"))
    if len(subjects) != len({parse_subject(subject) for subject in subjects}):
        problems.append(
            (("principals",), "two principals claim one certificate subject (in any spelling)")
        )
    if auth.enabled and not key_ids and not subjects:
        problems.append(
            (
                ("enabled",),
                "auth is on but no principal has an API key or a certificate subject; add"
                " one (`faregate new-api-key`) or set auth.enabled: false for local"
                " development",
            )
        )
    return problems
