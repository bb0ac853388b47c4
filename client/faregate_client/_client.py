"""A small typed async client for faregate's RouterService."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from faregate.v1 import router_pb2, router_pb2_grpc

from faregate_client._errors import error_from_rpc

Messages = str | Sequence[tuple[str, str]]
"""A lone user message, or (role, content) pairs with role system, user or assistant."""

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
"""Channel options that keep a stream's receive window small; FaregateClient uses them."""

_ROLES = {
    "system": router_pb2.ROLE_SYSTEM,
    "user": router_pb2.ROLE_USER,
    "assistant": router_pb2.ROLE_ASSISTANT,
}


def to_messages(messages: Messages) -> list[router_pb2.Message]:
    if isinstance(messages, str):
        return [router_pb2.Message(role=router_pb2.ROLE_USER, content=messages)]
    return [
        router_pb2.Message(role=_ROLES.get(role, router_pb2.ROLE_UNSPECIFIED), content=content)
        for role, content in messages
    ]


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
        """A TLS channel to `target` (FaregateClient makes one; admin tools may too)."""
        credentials = grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)
        options: list[tuple[str, str | int]] = list(STREAM_CHANNEL_OPTIONS)
        if self.server_name is not None:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(target, credentials, options=options)


class RouteStream:
    """A streamed completion: iterate it for text; `start` and `finish` hold the accounting.

    `start` is set once the first message arrives, `finish` once the stream
    ends successfully. Failures raise the typed errors of `faregate_client`.
    """

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        self._call = call
        self.start: router_pb2.StreamRouteResponse.StreamStart | None = None
        self.finish: router_pb2.StreamRouteResponse.StreamFinish | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for event in self._call:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    yield event.delta.text
                elif kind == "start":
                    self.start = event.start
                elif kind == "finish":
                    self.finish = event.finish
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None

    def cancel(self) -> None:
        """Cancels the call; faregate cancels the upstream request at once."""
        self._call.cancel()


class FaregateClient:
    """Calls faregate over one channel; use `async with FaregateClient(target):`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        channel: grpc.aio.Channel | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """
        Args:
            target: faregate's host:port.
            api_key: Sent as `authorization: Bearer <api_key>` on every call.
            channel: A channel of the caller's own, instead of one to `target`
                (then `tls` must be None).
            tls: Connect over TLS (or mutual TLS) instead of in plaintext.
        """
        if channel is not None and tls is not None:
            raise ValueError("pass tls or a channel of your own, not both")
        if channel is None:
            channel = (
                tls.secure_channel(target)
                if tls
                else grpc.aio.insecure_channel(target, options=STREAM_CHANNEL_OPTIONS)
            )
        self._channel = channel
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None

    async def __aenter__(self) -> FaregateClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    async def route(
        self,
        messages: Messages,
        *,
        budget_key: str,
        model: str = "",
        agent: str = "",
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        additional_budget_keys: Sequence[str] = (),
        request_id: str = "",
    ) -> router_pb2.RouteResponse:
        """One whole completion with its accounting.

        Pass a `request_id` (a fresh UUID per logical request, the same on
        every retry of it) and a retry is answered from the first result,
        never charged twice.

        Raises:
            faregate_client.FaregateError: a subclass per status code.
        """
        request = router_pb2.RouteRequest(
            model=model,
            messages=to_messages(messages),
            agent=agent,
            budget_key=budget_key,
            max_output_tokens=max_output_tokens,
            temperature=temperature,
            metadata=metadata,
            additional_budget_keys=additional_budget_keys,
            request_id=request_id,
        )
        try:
            return await self._stub.Route(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None

    def stream_route(
        self,
        messages: Messages,
        *,
        budget_key: str,
        model: str = "",
        agent: str = "",
        max_output_tokens: int | None = None,
        temperature: float | None = None,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        additional_budget_keys: Sequence[str] = (),
        request_id: str = "",
    ) -> RouteStream:
        """A streamed completion: `async for text in client.stream_route(...)`."""
        request = router_pb2.StreamRouteRequest(
            model=model,
            messages=to_messages(messages),
            agent=agent,
            budget_key=budget_key,
            max_output_tokens=max_output_tokens,
            temperature=temperature,
            metadata=metadata,
            additional_budget_keys=additional_budget_keys,
            request_id=request_id,
        )
        return RouteStream(
            self._stub.StreamRoute(request, timeout=timeout_s, metadata=self._metadata)
        )
