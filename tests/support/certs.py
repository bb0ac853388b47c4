"""Throwaway certificate authorities and certificates for the TLS tests.

Each `CertificateAuthority` is a fresh self-signed CA with its own P-256 key
(fast to make); it issues server certificates for loopback names (SANs, which
is what TLS clients check) and client certificates with a subject of the
test's choosing. Nothing here is meant to outlive a test run.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=1)
# Clocks of a CI machine and of this process may disagree a little.
_BACKDATE = datetime.timedelta(minutes=5)
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A PEM certificate and its PEM private key (unencrypted)."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Writes `<name>.crt` and `<name>.key` into `directory`; returns both paths."""
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._cert = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, name: str) -> Path:
        """Writes the CA certificate as `<name>.crt`; returns its path."""
        path = directory / f"{name}.crt"
        path.write_bytes(self.cert_pem)
        return path

    def issue_server(
        self, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    ) -> IssuedCertificate:
        """A server certificate valid for `hosts` (DNS names or IP addresses)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        return self._issue(
            subject,
            ExtendedKeyUsageOID.SERVER_AUTH,
            x509.SubjectAlternativeName(names),
        )

    def issue_client(self, common_name: str, organization: str = "") -> IssuedCertificate:
        """A client certificate with subject CN=`common_name` (and O=`organization`)."""
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        return self.issue_client_named(*attributes)

    def issue_client_named(self, *attributes: x509.NameAttribute[str]) -> IssuedCertificate:
        """A client certificate whose subject has `attributes`, in this order."""
        return self._issue(x509.Name(attributes), ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def _issue(
        self,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        alternative_names: x509.SubjectAlternativeName | None,
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if alternative_names is not None:
            builder = builder.add_extension(alternative_names, critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
        )


@dataclass(frozen=True, slots=True)
class Pki:
    """A CA with a loopback server certificate and a client certificate, all
    written to disk, and a second CA that faregate never trusts."""

    ca: CertificateAuthority
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client: IssuedCertificate
    """Subject O=Acme,CN=agent-1, issued by `ca`."""
    stranger_ca: CertificateAuthority
    stranger_client: IssuedCertificate
    """The same subject as `client`, issued by `stranger_ca`."""

    def server_tls(self, *, mutual: bool) -> dict[str, str]:
        """A `server.tls` config section using these files."""
        section = {"cert_file": str(self.server_cert_file), "key_file": str(self.server_key_file)}
        if mutual:
            section["client_ca_file"] = str(self.ca_file)
        return section


def write_pki(directory: Path) -> Pki:
    ca = CertificateAuthority("faregate test CA")
    stranger_ca = CertificateAuthority("stranger CA")
    server_cert_file, server_key_file = ca.issue_server().write(directory, "server")
    return Pki(
        ca=ca,
        ca_file=ca.write(directory, "ca"),
        server_cert_file=server_cert_file,
        server_key_file=server_key_file,
        client=ca.issue_client("agent-1", "Acme"),
        stranger_ca=stranger_ca,
        stranger_client=stranger_ca.issue_client("agent-1", "Acme"),
    )
