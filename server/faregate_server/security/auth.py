"""Who is calling, and whether they may do what they ask.

`Authenticator.authenticate` turns a call's credential (an API key in
`authorization: Bearer …`, or else a verified client certificate under
mutual TLS) into a principal; `authorize` checks a request's
budgets and route or model against the principal's grants. With auth off
every caller is `ANONYMOUS`, which is granted everything.

A name outside a principal's grant is refused with PERMISSION_DENIED before
anything looks it up, so a principal learns nothing of budgets or models it
was not given, not even whether they exist.

A key that passed its HMAC check is remembered until the next reconfigure,
by a BLAKE2b digest of the whole key (never the key itself), so its later
calls cost one fast digest instead of the HMAC. Only keys that matched enter,
so this is bounded by the configured keys, and timing tells a caller only
what the answer does: a key that is not valid, wrong secret or unknown id,
always pays the full HMAC check, as before.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import grpc

from faregate_server.clock import Clock
from faregate_server.config.schema import ApiKeyHash, AuthConfig, Grant, PrincipalConfig
from faregate_server.domain import RouteCall
from faregate_server.errors import (
    CertificateSubjectUnknown,
    CredentialInvalid,
    CredentialMissing,
    PermissionDenied,
)
from faregate_server.security.api_keys import key_id_of, matches
from faregate_server.security.distinguished_names import Subject, parse_subject, presented_subject
from faregate_server.security.principal_limits import Admission, PrincipalLimits
from faregate_server.security.tls import client_identity
from faregate_server.upstream.catalog import Catalog

Metadata = Iterable[tuple[str, str | bytes]]

_EVERYTHING = Grant(everything=True)
ANONYMOUS = PrincipalConfig(
    name="", budgets=_EVERYTHING, routes=_EVERYTHING, models=_EVERYTHING, admin=True
)
"""Every caller while auth is off."""

_BEARER = "bearer "
_AUTH_OFF_BANNER = (
    "AUTHENTICATION IS OFF (auth.enabled: false): anyone who can reach this port"
    " can spend every budget and call every model. Use this for local development only."
)

logger = logging.getLogger(__name__)


class Authenticator:
    def __init__(self, settings: AuthConfig, clock: Clock) -> None:
        self._limits = PrincipalLimits(clock)
        self._enabled = True
        self._keys: dict[str, tuple[ApiKeyHash, PrincipalConfig]] = {}
        self._subjects: dict[Subject, PrincipalConfig] = {}
        self._verified: dict[bytes, PrincipalConfig] = {}
        self.reconfigure(settings)

    def reconfigure(self, settings: AuthConfig) -> None:
        """Applies new keys and grants at once (key rotation is a reload);
        a kept principal keeps its rate and concurrency counts. Turning auth
        off is announced loudly, at start and on every reload."""
        if not settings.enabled:
            logger.warning(_AUTH_OFF_BANNER)
        self._enabled = settings.enabled
        self._keys = {
            stored.key_id: (stored, principal)
            for principal in settings.principals.values()
            for stored in principal.api_keys
        }
        self._verified = {}
        # By meaning, not spelling: `O=Acme,CN=a` is gRPC's `CN=a,O=Acme`.
        self._subjects = {
            parse_subject(subject): principal
            for principal in settings.principals.values()
            for subject in principal.certificate_subjects
        }
        self._limits.reconfigure(settings.principals)

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> PrincipalConfig:
        """The principal a call's credential names: its API key, or else its
        client certificate's subject.

        Raises:
            CredentialMissing: there is neither.
            CredentialInvalid: it names no principal (CertificateSubjectUnknown,
                naming the subject, for a certificate).
        """
        if not self._enabled:
            return ANONYMOUS
        key = _bearer_token(context.invocation_metadata() or ())
        if key is None:
            subject = client_identity(context) if self._subjects else None
            if subject is None:
                raise CredentialMissing()
            canonical = presented_subject(subject)
            by_certificate = None if canonical is None else self._subjects.get(canonical)
            if by_certificate is None:
                raise CertificateSubjectUnknown(subject)
            return by_certificate
        digest = _key_digest(key)
        verified = self._verified.get(digest)
        if verified is not None:
            return verified
        stored, principal = self._keys.get(key_id_of(key) or "", (None, None))
        # On a miss, the HMAC is paid on every path: an unknown key id (or a
        # key of no shape at all) costs the same HMAC as a wrong secret, so
        # timing tells a caller nothing about which key ids exist.
        if not matches(key, stored) or principal is None:
            raise CredentialInvalid()
        self._verified[digest] = principal
        return principal

    def admit(self, principal: PrincipalConfig) -> Admission:
        """Holds one of the principal's concurrent-request slots while entered.

        Raises:
            PrincipalRateLimited, PrincipalConcurrencyLimited: it is over a limit.
        """
        return self._limits.admit(principal)


def authorize(principal: PrincipalConfig, call: RouteCall, catalog: Catalog) -> None:
    """Checks every budget the call draws on and the route or model it names.

    Raises:
        PermissionDenied: one of them is outside the principal's grant.
    """
    for key in call.budget_keys:
        if not principal.budgets.allows(key):
            raise PermissionDenied(principal.name, "budget", key)
    name = call.model or catalog.config.server.default_route
    if catalog.is_route(call.model):
        if not principal.routes.allows(name):
            raise PermissionDenied(principal.name, "route", name)
    elif not principal.models.allows(name):
        raise PermissionDenied(principal.name, "model", name)


def require_admin(principal: PrincipalConfig) -> None:
    if not principal.admin:
        raise PermissionDenied(principal.name, "service", "AdminService")


def _key_digest(key: str) -> bytes:
    # surrogatepass: a key of any text has a digest (and matches nothing).
    return hashlib.blake2b(key.encode(errors="surrogatepass"), digest_size=16).digest()


def _bearer_token(metadata: Metadata) -> str | None:
    token = None
    for key, value in metadata:
        if key != "authorization":
            continue
        if token is not None or not isinstance(value, str):
            return ""  # two credentials, or a binary one: matches nothing
        if value[: len(_BEARER)].lower() != _BEARER:
            return ""
        token = value[len(_BEARER) :].strip()
    return token
