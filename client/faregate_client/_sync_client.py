"""The blocking client: SyncFaregateClient over one grpc channel, and SyncRouteStream.

It calls grpc's own blocking channel, not an event loop per call, so it works
in threads, in scripts and inside a program whose loop is already running.
Requests are built as FaregateClient builds them (`_request.py`) and failures
raise the same typed exceptions (`_errors.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Protocol, Unpack

import grpc
from faregate.v1 import router_pb2, router_pb2_grpc

from faregate_client._channel import STREAM_CHANNEL_OPTIONS, ClientTls
from faregate_client._errors import error_from_rpc
from faregate_client._request import Messages, RouteOptions, build_request


class _StreamCall(Protocol):
    """What grpc's blocking StreamRoute answers: its responses, and cancel()."""

    def __iter__(self) -> Iterator[router_pb2.StreamRouteResponse]: ...

    def cancel(self) -> object: ...


class SyncRouteStream:
    """A streamed completion: iterate it for text; `start` and `finish` hold the accounting.

    `start` is set once the first message arrives, `finish` once the stream
    ends successfully (with the finish reason). Failures raise the typed
    errors of `faregate_client`; after `cancel()` the iteration just ends.
    Leaving the loop early (a break, an exception) cancels the call, so the
    upstream stops and nothing more is charged.
    """

    def __init__(self, call: _StreamCall) -> None:
        self._call = call
        self._cancelled = False
        self.start: router_pb2.StreamRouteResponse.StreamStart | None = None
        self.finish: router_pb2.StreamRouteResponse.StreamFinish | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for event in self._call:
                kind = event.WhichOneof("event")
                if kind == "delta":
                    # Text only: a delta of a tool call, reasoning or a refusal
                    # has none (the calls arrive assembled in `finish`).
                    if event.delta.text:
                        yield event.delta.text
                elif kind == "start":
                    self.start = event.start
                elif kind == "finish":
                    self.finish = event.finish
        except grpc.RpcError as error:
            if self._cancelled and error.code() == grpc.StatusCode.CANCELLED:
                return
            raise _typed(error) from None
        finally:
            # A loop left early would leave the call open for as long as this
            # object lives, the upstream generating and the caller charged for
            # it. Cancelling a call that has ended does nothing.
            self._call.cancel()

    def cancel(self) -> None:
        """Cancels the call (from any thread); faregate cancels the upstream request at once."""
        self._cancelled = True
        self._call.cancel()


class SyncFaregateClient:
    """Calls faregate over one blocking grpc channel; use `with SyncFaregateClient(target):`.

    Its methods take what FaregateClient's take and return the same answers.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        channel: grpc.Channel | None = None,
        tls: ClientTls | None = None,
        generate_request_ids: bool = True,
    ) -> None:
        """
        Args:
            target: faregate's host:port.
            api_key: Sent as `authorization: Bearer <api_key>` on every call.
            channel: A blocking channel of the caller's own, instead of one to
                `target` (then `tls` must be None).
            tls: Connect over TLS (or mutual TLS) instead of in plaintext.
            generate_request_ids: Give every call that passes no `request_id`
                a fresh UUID4 one (the default; see FaregateClient).
        """
        if channel is not None and tls is not None:
            raise ValueError("pass tls or a channel of your own, not both")
        if channel is None:
            channel = (
                tls.secure_sync_channel(target)
                if tls
                else grpc.insecure_channel(target, options=STREAM_CHANNEL_OPTIONS)
            )
        self._channel = channel
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self._generate_request_ids = generate_request_ids

    def __enter__(self) -> SyncFaregateClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def route(
        self,
        messages: Messages,
        *,
        budget_key: str,
        timeout_s: float | None = None,
        **options: Unpack[RouteOptions],
    ) -> router_pb2.RouteResponse:
        """One whole completion with its accounting (see FaregateClient.route).

        Raises:
            faregate_client.FaregateError: a subclass per status code.
        """
        request = build_request(
            router_pb2.RouteRequest, messages, budget_key, options,
            generate_request_id=self._generate_request_ids,
        )  # fmt: skip
        try:
            return self._stub.Route(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _typed(error) from None

    def stream_route(
        self,
        messages: Messages,
        *,
        budget_key: str,
        timeout_s: float | None = None,
        **options: Unpack[RouteOptions],
    ) -> SyncRouteStream:
        """A streamed completion: `for text in client.stream_route(...)`.

        Takes what `route` takes.
        """
        request = build_request(
            router_pb2.StreamRouteRequest, messages, budget_key, options,
            generate_request_id=self._generate_request_ids,
        )  # fmt: skip
        return SyncRouteStream(
            self._stub.StreamRoute(request, timeout=timeout_s, metadata=self._metadata)
        )


def _typed(error: grpc.RpcError) -> Exception:
    # The RpcError a blocking call raises is its grpc.Call as well, with the
    # code, details and trailers error_from_rpc reads.
    return error_from_rpc(error) if isinstance(error, grpc.Call) else error
