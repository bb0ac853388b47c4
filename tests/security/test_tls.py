"""The `server.tls` config section, and `client_identity` as a servicer sees it
on a real grpc.aio server bound with faregate's own `add_port` and called
through the typed client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import ClientTls, FaregateClient
from faregate_server.config.load import parse_config
from faregate_server.config.schema import ConfigError, TlsConfig
from faregate_server.security.tls import add_port, client_identity

from tests.conftest import TEST_ENV, base_config
from tests.support.certs import Pki, write_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return write_pki(tmp_path)


def _load(tls: Any) -> TlsConfig | None:
    data = base_config("http://127.0.0.1:1")
    data["server"]["tls"] = tls
    return parse_config(yaml.safe_dump(data), env=TEST_ENV).server.tls


def test_no_tls_section_serves_plaintext() -> None:
    assert _load(None) is None


def test_tls_section_reads_the_pem_files(pki: Pki) -> None:
    tls = _load(pki.server_tls(mutual=True))

    assert tls is not None
    assert tls.cert_pem == pki.server_cert_file.read_bytes()
    assert tls.key_pem == pki.server_key_file.read_bytes()
    assert tls.client_ca_pem == pki.ca.cert_pem
    assert tls.mutual
    assert "PRIVATE" not in repr(tls)


def test_tls_without_client_ca_is_not_mutual(pki: Pki) -> None:
    tls = _load(pki.server_tls(mutual=False))

    assert tls is not None
    assert not tls.mutual


def _write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cert_file": None}, "server.tls.cert_file: is required"),
        ({"key_file": "/nonexistent/server.key"}, "server.tls.key_file: cannot read"),
        ({"client_ca_file": "/nonexistent/ca.crt"}, "server.tls.client_ca_file: cannot read"),
        ({"cert_file": "KEY"}, "server.tls.cert_file: .* holds no valid PEM certificate"),
        (
            {"client_ca_file": "GARBAGE"},
            "server.tls.client_ca_file: .* holds no valid PEM certificate",
        ),
        ({"key_file": "CERT"}, "server.tls.key_file: .* is not a PEM private key"),
        ({"key_file": "OTHER_KEY"}, "server.tls.key_file: .* is not the key of"),
        ({"require_client_cert": False}, "server.tls.require_client_cert: unknown field"),
    ],
)
def test_bad_tls_files_stop_loading_naming_the_field(
    pki: Pki, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    files = {
        "KEY": _write(tmp_path, "key-as-cert.pem", pki.server_key_file.read_bytes()),
        "CERT": str(pki.server_cert_file),
        "GARBAGE": _write(tmp_path, "garbage.pem", b"-----BEGIN CERTIFICATE-----\nnope\n"),
        "OTHER_KEY": _write(tmp_path, "other.key", pki.client.key_pem),
    }
    section: dict[str, Any] = pki.server_tls(mutual=True)
    for key, value in change.items():
        if value is None:
            del section[key]
        else:
            section[key] = files.get(value, value) if isinstance(value, str) else value

    with pytest.raises(ConfigError, match=message):
        _load(section)


def test_an_encrypted_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    encrypted = (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    section = pki.server_tls(mutual=False)
    section["key_file"] = _write(tmp_path, "encrypted.key", encrypted)

    with pytest.raises(ConfigError, match=r"server.tls.key_file: .* is encrypted"):
        _load(section)


class _IdentityEcho(router_pb2_grpc.RouterServiceServicer):
    """A test-only router that answers each call with its caller's identity."""

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> router_pb2.RouteResponse:
        return router_pb2.RouteResponse(output=repr(client_identity(context)))

    async def StreamRoute(
        self, request: router_pb2.StreamRouteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[router_pb2.StreamRouteResponse]:
        delta = router_pb2.StreamRouteResponse.StreamDelta(text=repr(client_identity(context)))
        yield router_pb2.StreamRouteResponse(delta=delta)


@asynccontextmanager
async def _echo_server(tls: TlsConfig | None) -> AsyncIterator[str]:
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(_IdentityEcho(), server)
    port = add_port(server, "127.0.0.1:0", tls)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _identity_seen(target: str, tls: ClientTls | None) -> str:
    """What the servicer saw, the same on a unary and a streaming call."""
    async with FaregateClient(target, tls=tls) as client:
        unary = (await client.route("who am I?", budget_key="any", timeout_s=10)).output
        streamed = [text async for text in client.stream_route("who?", budget_key="any")]
    assert streamed == [unary]
    return unary


async def test_servicer_sees_the_client_certificate_subject_under_mutual_tls(pki: Pki) -> None:
    tls = ClientTls(pki.ca.cert_pem, pki.client.cert_pem, pki.client.key_pem)
    async with _echo_server(_load(pki.server_tls(mutual=True))) as target:
        seen = await _identity_seen(target, tls)

    assert seen == repr("O=Acme,CN=agent-1")


async def test_servicer_sees_no_identity_over_server_only_tls_or_plaintext(pki: Pki) -> None:
    # A certificate the server never asked for identifies nobody.
    tls = ClientTls(pki.ca.cert_pem, pki.client.cert_pem, pki.client.key_pem)
    async with _echo_server(_load(pki.server_tls(mutual=False))) as target:
        over_tls = await _identity_seen(target, tls)
    async with _echo_server(None) as target:
        over_plaintext = await _identity_seen(target, None)

    assert over_tls == repr(None)
    assert over_plaintext == repr(None)


def test_client_tls_needs_cert_and_key_together(pki: Pki) -> None:
    with pytest.raises(ValueError, match="needs its key"):
        ClientTls(pki.ca.cert_pem, cert_pem=pki.client.cert_pem)
