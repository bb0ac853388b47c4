"""The `server` section (the gRPC port, its limits and TLS) and the `admin` section.

TLS files are read and checked with the ssl module when the config is loaded, so a
bad file stops startup naming its field instead of failing every handshake later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import model_validator
from pydantic.json_schema import SkipJsonSchema

from faregate_server.config.fields import (
    SECTION,
    Address,
    Boolean,
    Integer,
    Number,
    Text,
    set_derived,
)
from faregate_server.config.problems import Loc, reject

MIN_HEADER_BYTES = 1024
"""Below this, ordinary gRPC headers (path, deadline, user agent) stop fitting."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the gRPC port: the files' paths and the PEM contents read and
    checked when the config was loaded.

    The server reads the files again before each new connection's handshake
    and switches to new contents that pass the same checks, so the contents
    take no part in comparing configs.
    """

    __pydantic_config__ = SECTION

    cert_file: Annotated[str, Text()]
    """The server's certificate chain (PEM), leaf first."""
    key_file: Annotated[str, Text()]
    """The private key of `cert_file` (PEM, unencrypted)."""
    client_ca_file: Annotated[str, Text()] = ""
    """CA certificates (PEM) that sign client certificates; when set, every
    client must present one (mutual TLS)."""
    cert_pem: SkipJsonSchema[bytes] = field(init=False, default=b"", repr=False, compare=False)
    key_pem: SkipJsonSchema[bytes] = field(init=False, default=b"", repr=False, compare=False)
    client_ca_pem: SkipJsonSchema[bytes] = field(init=False, default=b"", repr=False, compare=False)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca_pem)

    @model_validator(mode="after")
    def _read_files(self) -> TlsConfig:
        problems: list[tuple[Loc, str]] = []
        cert_pem = _read_certificates("cert_file", self.cert_file, problems)
        key_pem = _read_file("key_file", self.key_file, problems)
        if key_pem is not None:
            if b"PRIVATE KEY-----" not in key_pem:
                problems.append((("key_file",), f"{self.key_file} is not a PEM private key"))
            elif b"ENCRYPTED" in key_pem:
                problems.append(
                    (("key_file",), f"{self.key_file} is encrypted; give an unencrypted key")
                )
            elif cert_pem is not None:
                try:
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    context.load_cert_chain(self.cert_file, self.key_file)
                except (ssl.SSLError, OSError) as error:
                    problems.append(
                        (
                            ("key_file",),
                            f"{self.key_file} is not the key of {self.cert_file}: {_reason(error)}",
                        )
                    )
        client_ca_pem = None
        if self.client_ca_file:
            client_ca_pem = _read_certificates("client_ca_file", self.client_ca_file, problems)
        reject(problems)
        set_derived(self, "cert_pem", cert_pem or b"")
        set_derived(self, "key_pem", key_pem or b"")
        set_derived(self, "client_ca_pem", client_ca_pem or b"")
        return self


def _read_file(key: str, path: str, problems: list[tuple[Loc, str]]) -> bytes | None:
    if not path:
        problems.append(((key,), "must not be empty"))
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        problems.append(((key,), f"cannot read {path}: {error.strerror}"))
        return None


def _read_certificates(key: str, path: str, problems: list[tuple[Loc, str]]) -> bytes | None:
    pem = _read_file(key, path, problems)
    if pem is None:
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as error:
        problems.append(((key,), f"{path} holds no valid PEM certificate: {_reason(error)}"))
        return None
    return pem


def _reason(error: Exception) -> str:
    # OpenSSL's short reason (e.g. KEY_VALUES_MISMATCH), not its source line.
    return getattr(error, "reason", None) or str(error)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The gRPC port: where it listens, what it accepts, how it stops."""

    __pydantic_config__ = SECTION

    listen: Annotated[str, Address()] = "127.0.0.1:50051"
    """host:port for the gRPC server."""
    default_route: Annotated[str, Text()] = "default"
    """Route (or model) used when a request's `model` is empty."""
    default_deadline_s: Annotated[float, Number()] = 60.0
    """Deadline for callers that set none; no call is ever unbounded."""
    max_request_bytes: Annotated[int, Integer(1)] = 1 << 20
    """Largest serialized request accepted."""
    max_output_tokens_limit: Annotated[int, Integer(1)] = 1_000_000
    """Largest `max_output_tokens` any request may ask for."""
    max_messages: Annotated[int, Integer(1)] = 1024
    """Most messages one request may carry."""
    max_message_chars: Annotated[int, Integer(1)] = 524_288
    """Most characters (code points) in one message's content."""
    max_metadata_entries: Annotated[int, Integer(0)] = 64
    """Most entries in a request's `metadata` map."""
    max_metadata_key_chars: Annotated[int, Integer(1)] = 128
    """Longest key in a request's `metadata` map."""
    max_metadata_value_chars: Annotated[int, Integer(0)] = 2048
    """Longest value in a request's `metadata` map."""
    max_images: Annotated[int, Integer(0)] = 20
    """Most images one request may show the model, over all its messages."""
    max_image_bytes: Annotated[int, Integer(1)] = 768 << 10
    """Largest image a request may send inline (`Image.data`), in bytes. Its
    request counts it toward `max_request_bytes` too, so only a value less
    than that applies: three quarters of its default leaves the rest for the
    conversation. Raise both for larger images, up to Anthropic's 5 MiB."""
    max_header_bytes: Annotated[int, Integer(MIN_HEADER_BYTES)] = 16384
    """Largest gRPC header block (call metadata) the transport accepts."""
    shutdown_grace_s: Annotated[float, Number(0)] = 5.0
    """How long in-flight requests may run on after a stop is asked; streams
    still running then are ended with UNAVAILABLE and charged what they delivered."""
    drain_delay_s: Annotated[float, Number(0)] = 0.0
    """On a stop, how long health reports NOT_SERVING before new requests are
    refused, so load balancers stop sending first."""
    reload_poll_s: Annotated[float, Number(0)] = 2.0
    """How often the config file is checked for changes (0 turns watching off)."""
    max_concurrent_calls: Annotated[int, Integer(1)] = 1000
    """Most Route and StreamRoute calls this process serves at once; one more
    is refused at once with UNAVAILABLE (SERVER_OVERLOADED), never queued.
    Per process: `--workers N` admits N times as many."""
    loop_lag_limit_s: Annotated[float, Number(0)] = 0.1
    """Once the event loop has woken a background probe later than this twice
    within a second, new calls are refused at once with UNAVAILABLE
    (SERVER_OVERLOADED), until a second passes with no late wake-up; 0 turns
    the guard off (the lag is still measured, for the metric)."""
    tls: TlsConfig | None = None
    """TLS (and mutual TLS) for the gRPC port; absent or null serves plaintext."""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The operators' AdminService."""

    __pydantic_config__ = SECTION

    enabled: Annotated[bool, Boolean()] = False
    """Serve faregate.v1.AdminService (to principals granted `admin`)."""
    listen: Annotated[str, Address(optional=True)] = ""
    """host:port of a separate gRPC server for the AdminService (a private
    interface, say); empty serves it beside the RouterService. It must differ
    from server.listen."""
