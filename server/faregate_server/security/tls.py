"""Transport security for faregate's gRPC ports: TLS, and mutual TLS.

`server_credentials` turns the config's `TlsConfig` into grpc credentials
(None: plaintext), `add_port` binds a port with them, and `client_identity`
reads the verified client certificate's subject from a call's auth context,
for mapping a caller to a principal.

Certificates rotate without a restart: before each new connection's
handshake grpc asks `_CertificateFiles` for news, and it reads the files
again; contents that differ and pass the load-time checks are served from
then on, while bad ones (a key that does not match, a half-written file) are
logged once and the old certificates keep serving. Connections already open
keep the certificate they were made with.

grpc's Python API can either require a client certificate or not ask for one
at all; it cannot ask for one and accept its absence. So a client CA means
every client must present a certificate that CA signed: the handshake fails
otherwise, before any RPC, and `client_identity` is then never None.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from faregate_server.config.load import load_tls
from faregate_server.config.schema import ConfigError, TlsConfig

logger = logging.getLogger(__name__)

# Set by grpc only for a certificate that passed verification; the subject
# in RFC 2253 form, which reverses the certificate's order: the usual
# O-then-CN certificate reads "CN=agent-1,O=Acme" (distinguished_names.py
# compares subjects whatever their order).
_SUBJECT = "x509_subject"


def server_credentials(tls: TlsConfig | None) -> grpc.ServerCredentials | None:
    """The credentials for a port configured with `tls`, or None for plaintext."""
    if tls is None:
        return None
    files = _CertificateFiles(tls)
    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(tls),
        # None means "no change" (grpc's documentation); the stub is stricter.
        files.fetch,  # type: ignore[arg-type]
        require_client_authentication=tls.mutual,
    )


def add_port(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> int:
    """Binds `address` on `server`, with TLS when `tls` is set; returns the port.

    Raises:
        OSError: the address cannot be bound.
    """
    credentials = server_credentials(tls)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # how grpc reports a failed bind
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or not this host's")
    return port


def client_identity(context: grpc.aio.ServicerContext[object, object]) -> str | None:
    """The subject of the caller's verified client certificate as gRPC
    writes it, e.g. "CN=agent-1,O=Acme"; None on a plaintext or server-only
    TLS port."""
    subject = next(iter(context.auth_context().get(_SUBJECT, ())), None)
    return None if subject is None else subject.decode()


def _certificate_configuration(tls: TlsConfig) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(tls.key_pem, tls.cert_pem)], root_certificates=tls.client_ca_pem or None
    )


_Contents = tuple[bytes, bytes, bytes]


class _CertificateFiles:
    """The TLS files as last served; `fetch` reports when they change."""

    def __init__(self, tls: TlsConfig) -> None:
        self._section = {
            "cert_file": tls.cert_file,
            "key_file": tls.key_file,
            "client_ca_file": tls.client_ca_file,
        }
        self._serving: _Contents = (tls.cert_pem, tls.key_pem, tls.client_ca_pem)
        self._refused: object = None
        """The bad contents (or unreadable file) last logged."""
        # grpc calls fetch from its own threads, several at once.
        self._lock = threading.Lock()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """New certificates if the files changed and pass the checks, else None
        (keep serving the current ones). Never raises: grpc calls it before
        every handshake."""
        try:
            with self._lock:
                return self._fetch()
        except Exception:
            logger.exception("TLS certificates not reloaded; the old ones keep serving")
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            contents = self._read()
        except OSError as error:
            self._refuse(error.filename, f"cannot read {error.filename}: {error.strerror}")
            return None
        if contents == self._serving:
            self._refused = None  # a bad state that came back would be news again
            return None
        if contents == self._refused:
            return None
        try:
            fresh = load_tls(self._section)
        except ConfigError as error:
            self._refuse(contents, str(error))
            return None
        self._serving = (fresh.cert_pem, fresh.key_pem, fresh.client_ca_pem)
        self._refused = None
        logger.info("TLS certificates reloaded from %s", self._section["cert_file"])
        return _certificate_configuration(fresh)

    def _refuse(self, what: object, problem: str) -> None:
        # Once per bad state, not once per handshake.
        if what != self._refused:
            logger.error("TLS certificates not reloaded; the old ones keep serving: %s", problem)
            self._refused = what

    def _read(self) -> _Contents:
        ca_file = self._section["client_ca_file"]
        return (
            Path(self._section["cert_file"]).read_bytes(),
            Path(self._section["key_file"]).read_bytes(),
            Path(ca_file).read_bytes() if ca_file else b"",
        )
