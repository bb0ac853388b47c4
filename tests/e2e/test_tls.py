"""faregate over TLS and mutual TLS, end to end: the typed client, the
command-line client and `buf curl` against a faregate whose certificates come
from a throwaway CA; and every client the handshake must refuse."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from faregate_client import ClientTls, FaregateClient, Unauthenticated, Unavailable

from tests.conftest import Faregate, StartFaregate, read_stream, to_config
from tests.e2e.test_third_party_clients import BUF, _run
from tests.fakes.upstream import FakeUpstream, Script
from tests.support.certs import CertificateAuthority, Pki, write_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return write_pki(tmp_path)


@pytest.fixture
async def tls_faregate(
    start_faregate: StartFaregate, config_data: dict[str, Any], pki: Pki
) -> AsyncIterator[Faregate]:
    """faregate serving TLS (no client certificates asked for)."""
    config_data["server"]["tls"] = pki.server_tls(mutual=False)
    async with start_faregate(to_config(config_data)) as running:
        yield running


@pytest.fixture
async def mtls_faregate(
    start_faregate: StartFaregate, config_data: dict[str, Any], pki: Pki
) -> AsyncIterator[Faregate]:
    """faregate serving mutual TLS: clients need a certificate from `pki.ca`."""
    config_data["server"]["tls"] = pki.server_tls(mutual=True)
    async with start_faregate(to_config(config_data)) as running:
        yield running


async def _route_and_stream(target: str, tls: ClientTls | None, upstream: FakeUpstream) -> None:
    upstream.default = Script(chunks=["over", " tls"], usage=(5, 2))
    async with FaregateClient(target, tls=tls) as client:
        reply = await client.route("hi", budget_key="team", timeout_s=10)
        stream = client.stream_route("hi", budget_key="team", timeout_s=10)
        texts = await read_stream(stream)

    assert reply.output == "over tls"
    assert reply.cost_nano_usd == 5 * 2_500 + 2 * 10_000
    assert texts == ["over", " tls"]
    assert stream.finish is not None
    assert stream.finish.cost_nano_usd == 5 * 2_500 + 2 * 10_000


async def _refused(target: str, tls: ClientTls | None) -> Unavailable:
    async with FaregateClient(target, tls=tls) as client:
        with pytest.raises(Unavailable) as refused:
            await client.route("hi", budget_key="team", timeout_s=10)
    return refused.value


async def test_route_and_stream_route_over_tls(
    tls_faregate: Faregate, pki: Pki, upstream: FakeUpstream
) -> None:
    await _route_and_stream(tls_faregate.target, ClientTls(ca_pem=pki.ca.cert_pem), upstream)


async def test_tls_by_host_name_and_by_server_name_override(
    tls_faregate: Faregate, pki: Pki, upstream: FakeUpstream
) -> None:
    # The certificate names localhost and 127.0.0.1; a client dialling by IP
    # may still ask for the name it expects.
    by_name = f"localhost:{tls_faregate.running.port}"
    overridden = ClientTls(ca_pem=pki.ca.cert_pem, server_name="localhost")

    await _route_and_stream(by_name, ClientTls(ca_pem=pki.ca.cert_pem), upstream)
    await _route_and_stream(tls_faregate.target, overridden, upstream)


async def test_route_and_stream_route_over_mutual_tls(
    mtls_faregate: Faregate, pki: Pki, upstream: FakeUpstream
) -> None:
    tls = ClientTls(pki.ca.cert_pem, pki.client.cert_pem, pki.client.key_pem)

    await _route_and_stream(mtls_faregate.target, tls, upstream)


async def test_client_trusting_another_ca_is_refused(
    tls_faregate: Faregate, pki: Pki, upstream: FakeUpstream
) -> None:
    refused = await _refused(tls_faregate.target, ClientTls(ca_pem=pki.stranger_ca.cert_pem))

    assert "CERTIFICATE_VERIFY_FAILED" in str(refused)
    assert upstream.completed == 0
    assert await tls_faregate.reserved_nano_usd() == 0


async def test_client_expecting_another_server_name_is_refused(
    tls_faregate: Faregate, pki: Pki
) -> None:
    await _refused(
        tls_faregate.target, ClientTls(ca_pem=pki.ca.cert_pem, server_name="faregate.example")
    )


async def test_plaintext_client_is_refused_by_a_tls_port(tls_faregate: Faregate) -> None:
    await _refused(tls_faregate.target, None)


async def test_tls_client_is_refused_by_a_plaintext_port(faregate: Faregate, pki: Pki) -> None:
    await _refused(faregate.target, ClientTls(ca_pem=pki.ca.cert_pem))


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_faregate: Faregate, pki: Pki, upstream: FakeUpstream
) -> None:
    await _refused(mtls_faregate.target, ClientTls(ca_pem=pki.ca.cert_pem))

    assert upstream.completed == 0


async def test_mutual_tls_refuses_a_certificate_from_another_ca(
    mtls_faregate: Faregate, pki: Pki, upstream: FakeUpstream
) -> None:
    # The same subject as the good certificate: only the issuer differs.
    stranger = pki.stranger_client
    await _refused(
        mtls_faregate.target, ClientTls(pki.ca.cert_pem, stranger.cert_pem, stranger.key_pem)
    )

    assert upstream.completed == 0
    assert await mtls_faregate.reserved_nano_usd() == 0


async def test_mutual_tls_serves_on_after_refusing_clients(
    mtls_faregate: Faregate, pki: Pki, upstream: FakeUpstream
) -> None:
    await _refused(mtls_faregate.target, None)
    await _refused(mtls_faregate.target, ClientTls(ca_pem=pki.ca.cert_pem))

    good = ClientTls(pki.ca.cert_pem, pki.client.cert_pem, pki.client.key_pem)
    await _route_and_stream(mtls_faregate.target, good, upstream)


async def test_command_line_client_speaks_mutual_tls(
    mtls_faregate: Faregate, pki: Pki, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.default = Script(chunks=["from", " the shell"], usage=(5, 2))
    cert_file, key_file = pki.client.write(tmp_path, "agent")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_client", "hi", "--target", mtls_faregate.target,
        "--budget-key", "team", "--ca", str(pki.ca_file), "--cert", str(cert_file),
        "--key", str(key_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        stdout, stderr = await process.communicate()

    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == "from the shell"
    assert "model=gpt-fake" in stderr.decode()


async def _buf_curl_tls(target: str, method: str, body: dict[str, Any], *flags: str) -> str:
    if not BUF.exists():
        pytest.fail(f"buf not found at {BUF}: run `make tools` (or set FAREGATE_BUF)")
    argv = [str(BUF), "curl", "--protocol", "grpc", *flags, "--data", json.dumps(body)]
    return await _run(*argv, f"https://{target}/{method}")


async def test_buf_curl_calls_route_over_mutual_tls_by_reflection(
    mtls_faregate: Faregate, pki: Pki, upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.default = Script(chunks=["from", " buf"], usage=(5, 2))
    cert_file, key_file = pki.client.write(tmp_path, "agent")
    body = {"messages": [{"role": "ROLE_USER", "content": "hi"}], "budgetKey": "team"}

    flags = ["--cacert", str(pki.ca_file), "--cert", str(cert_file), "--key", str(key_file)]
    target = f"localhost:{mtls_faregate.running.port}"

    answer = json.loads(
        await _buf_curl_tls(target, "faregate.v1.RouterService/Route", body, *flags)
    )

    assert answer["output"] == "from buf"
    assert answer["costNanoUsd"] == str(5 * 2_500 + 2 * 10_000)


async def test_replaced_certificates_serve_new_connections_without_a_restart(
    tls_faregate: Faregate, pki: Pki, upstream: FakeUpstream
) -> None:
    before = ClientTls(ca_pem=pki.ca.cert_pem)
    async with FaregateClient(tls_faregate.target, tls=before) as connected:
        await connected.route("hi", budget_key="team", timeout_s=10)
        successor = CertificateAuthority("successor CA")
        replacement = successor.issue_server()
        pki.server_cert_file.write_bytes(replacement.cert_pem)
        pki.server_key_file.write_bytes(replacement.key_pem)

        await _route_and_stream(tls_faregate.target, ClientTls(ca_pem=successor.cert_pem), upstream)
        await _refused(tls_faregate.target, before)
        # A connection made before the switch keeps its certificate.
        await connected.route("hi", budget_key="team", timeout_s=10)


async def test_a_bad_replacement_is_logged_once_and_the_old_certificate_serves_on(
    tls_faregate: Faregate, pki: Pki, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    pki.server_key_file.write_bytes(pki.client.key_pem)  # not the certificate's key
    tls = ClientTls(ca_pem=pki.ca.cert_pem)

    await _route_and_stream(tls_faregate.target, tls, upstream)
    await _route_and_stream(tls_faregate.target, tls, upstream)

    refusals = [r for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(refusals) == 1
    assert "server.tls.key_file" in refusals[0].getMessage()
    assert "KEY_VALUES_MISMATCH" in refusals[0].getMessage()


def _organization_then_name(common_name: str) -> tuple[x509.NameAttribute[str], ...]:
    """A subject in the usual order, which gRPC reports most specific first."""
    return (
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    )


@asynccontextmanager
async def _certificate_principal(
    start_faregate: StartFaregate, config_data: dict[str, Any], pki: Pki, *subjects: str
) -> AsyncIterator[Faregate]:
    """Mutual TLS with auth on: one principal, `by-certificate`, claims `subjects`."""
    config_data["server"]["tls"] = pki.server_tls(mutual=True)
    config_data["auth"] = {
        "enabled": True,
        "principals": {
            "by-certificate": {
                "certificate_subjects": list(subjects),
                "budgets": ["team"],
                "routes": ["default"],
            }
        },
    }
    async with start_faregate(to_config(config_data)) as running:
        yield running


@pytest.mark.parametrize(
    "written",
    [
        "O=Acme,CN=agent-1",  # the certificate's own order
        "CN=agent-1,O=Acme",  # gRPC's order
        "cn=agent-1, o = Acme",  # case and spaces in the types
        "2.5.4.10=Acme,OID.2.5.4.3=agent-1",  # the types' OIDs
    ],
)
async def test_a_certificate_subject_matches_in_any_order_and_spelling(
    start_faregate: StartFaregate,
    config_data: dict[str, Any],
    pki: Pki,
    upstream: FakeUpstream,
    written: str,
) -> None:
    issued = pki.ca.issue_client_named(*_organization_then_name("agent-1"))
    tls = ClientTls(pki.ca.cert_pem, issued.cert_pem, issued.key_pem)
    async with _certificate_principal(start_faregate, config_data, pki, written) as running:
        await _route_and_stream(running.target, tls, upstream)


async def test_an_escaped_comma_in_a_subject_is_part_of_its_value(
    start_faregate: StartFaregate, config_data: dict[str, Any], pki: Pki, upstream: FakeUpstream
) -> None:
    issued = pki.ca.issue_client_named(*_organization_then_name("agent, the first"))
    tls = ClientTls(pki.ca.cert_pem, issued.cert_pem, issued.key_pem)
    subject = "O=Acme,CN=agent\\, the first"
    async with _certificate_principal(start_faregate, config_data, pki, subject) as running:
        await _route_and_stream(running.target, tls, upstream)


async def test_an_unclaimed_certificate_is_refused_naming_its_subject(
    start_faregate: StartFaregate, config_data: dict[str, Any], pki: Pki, upstream: FakeUpstream
) -> None:
    issued = pki.ca.issue_client_named(*_organization_then_name("agent-2"))
    tls = ClientTls(pki.ca.cert_pem, issued.cert_pem, issued.key_pem)
    # Same attributes but the value's case: values are compared exactly.
    claimed = ("O=Acme,CN=agent-1", "O=Acme,CN=Agent-2")
    async with (
        _certificate_principal(start_faregate, config_data, pki, *claimed) as running,
        FaregateClient(running.target, tls=tls) as stranger,
    ):
        with pytest.raises(Unauthenticated) as refused:
            await stranger.route("hi", budget_key="team", timeout_s=10)

    assert refused.value.reason == "API_KEY_INVALID"
    assert "'CN=agent-2,O=Acme'" in refused.value.message
    assert refused.value.metadata["certificateSubject"] == "CN=agent-2,O=Acme"
    assert upstream.received == []
    assert await running.reserved_nano_usd() == 0
