"""The channels the clients open: plaintext or TLS, with a small stream receive window.

Both clients take their channel options from `STREAM_CHANNEL_OPTIONS`, and
`ClientTls` opens the same TLS channel for either (grpc.aio for FaregateClient,
grpc's own for SyncFaregateClient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

STREAM_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # faregate charges a stream for the messages the caller's HTTP/2 receive
    # window accepted (see docs/routing.md, "What a stream is charged for"), so
    # the window is kept small: BDP probing would grow it to megabytes for a
    # reader that reads slowly, and every byte of it is text the caller pays
    # for before reading. 16 KiB still carries about a thousand small deltas
    # per round trip, far beyond any model's token rate.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 16 * 1024),
)
"""Channel options that keep a stream's receive window small; both clients use them."""


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How the client speaks TLS to faregate.

    With no `ca_pem` the system's trusted roots verify the server. A client
    certificate (`cert_pem` with its `key_pem`) is for mutual TLS.
    """

    ca_pem: bytes | None = None
    """CA certificates (PEM) trusted to sign faregate's certificate."""
    cert_pem: bytes | None = None
    """This client's certificate chain (PEM), for mutual TLS."""
    key_pem: bytes | None = field(default=None, repr=False)
    """The private key (PEM) of `cert_pem`."""
    server_name: str | None = None
    """The name to expect in faregate's certificate instead of the target's host."""

    def __post_init__(self) -> None:
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> ClientTls:
        """Reads the PEM files given (raises OSError if one cannot be read)."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca_file), read(cert_file), read(key_file), server_name)

    def secure_channel(self, target: str) -> grpc.aio.Channel:
        """A grpc.aio TLS channel to `target` (FaregateClient makes one; admin tools may too)."""
        return grpc.aio.secure_channel(target, self._credentials(), options=self._options())

    def secure_sync_channel(self, target: str) -> grpc.Channel:
        """A blocking TLS channel to `target`, as SyncFaregateClient makes one."""
        return grpc.secure_channel(target, self._credentials(), options=self._options())

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)

    def _options(self) -> list[tuple[str, str | int]]:
        options: list[tuple[str, str | int]] = list(STREAM_CHANNEL_OPTIONS)
        if self.server_name is not None:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return options
