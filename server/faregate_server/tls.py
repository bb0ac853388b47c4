"""Transport security for faregate's gRPC ports: TLS, and mutual TLS.

`server_credentials` turns the config's `TlsConfig` into grpc credentials
(None: plaintext), `add_port` binds a port with them, and `client_identity`
reads the verified client certificate's subject from a call's auth context,
for mapping a caller to a principal.

grpc's Python API can either require a client certificate or not ask for one
at all; it cannot ask for one and accept its absence. So a client CA means
every client must present a certificate that CA signed: the handshake fails
otherwise, before any RPC, and `client_identity` is then never None.
"""

from __future__ import annotations

import grpc

from faregate_server.config import TlsConfig

# Set by grpc only for a certificate that passed verification; the subject
# in RFC 2253 form, most specific part last (e.g. "O=Acme,CN=agent-1").
_SUBJECT = "x509_subject"


def server_credentials(tls: TlsConfig | None) -> grpc.ServerCredentials | None:
    """The credentials for a port configured with `tls`, or None for plaintext."""
    if tls is None:
        return None
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)],
        root_certificates=tls.client_ca_pem or None,
        require_client_auth=tls.mutual,
    )


def add_port(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> int:
    """Binds `address` on `server`, with TLS when `tls` is set; returns the port.

    Raises:
        OSError: the address cannot be bound.
    """
    credentials = server_credentials(tls)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def client_identity(context: grpc.aio.ServicerContext[object, object]) -> str | None:
    """The subject of the caller's verified client certificate, e.g.
    "O=Acme,CN=agent-1"; None on a plaintext or server-only TLS port."""
    subject = next(iter(context.auth_context().get(_SUBJECT, ())), None)
    return None if subject is None else subject.decode()
