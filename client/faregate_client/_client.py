"""The async client: FaregateClient over one grpc.aio channel, and RouteStream.

Every failed call raises the typed exception of its status (`_errors.py`),
never a bare grpc error; a stream raises it from its iteration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Unpack

import grpc
from faregate.v1 import router_pb2, router_pb2_grpc

from faregate_client._channel import STREAM_CHANNEL_OPTIONS, ClientTls
from faregate_client._errors import error_from_rpc
from faregate_client._request import Messages, RouteOptions, build_request


class RouteStream:
    """A streamed completion: iterate it for text; `start` and `finish` hold the accounting.

    `start` is set once the first message arrives, `finish` once the stream
    ends successfully (with the finish reason). Failures raise the typed
    errors of `faregate_client`. Leaving the loop early (a break, an
    exception) cancels the call, so the upstream stops and nothing more is
    charged.
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
                    # Text only: a delta of a tool call, reasoning or a refusal
                    # has none (the calls arrive assembled in `finish`).
                    if event.delta.text:
                        yield event.delta.text
                elif kind == "start":
                    self.start = event.start
                elif kind == "finish":
                    self.finish = event.finish
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        finally:
            # A loop left early would leave the call open for as long as this
            # object lives, the upstream generating and the caller charged for
            # it. Cancelling a call that has ended does nothing.
            self._call.cancel()

    def cancel(self) -> None:
        """Cancels the call; faregate cancels the upstream request at once."""
        self._call.cancel()


class FaregateClient:
    """Calls faregate over one grpc.aio channel; use `async with FaregateClient(target):`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        channel: grpc.aio.Channel | None = None,
        tls: ClientTls | None = None,
        generate_request_ids: bool = True,
    ) -> None:
        """
        Args:
            target: faregate's host:port.
            api_key: Sent as `authorization: Bearer <api_key>` on every call.
            channel: A channel of the caller's own, instead of one to `target`
                (then `tls` must be None).
            tls: Connect over TLS (or mutual TLS) instead of in plaintext.
            generate_request_ids: Give every call that passes no `request_id`
                a fresh UUID4 one (the default), so that a resend of that
                request message (gRPC's own retries) is served and charged
                once. Calling again is a new call with a new id: to retry by
                calling again, pass your own `request_id` to every attempt.
                False sends no id unless one is passed, and faregate makes
                its own (not kept for retries).
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
        self._generate_request_ids = generate_request_ids

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
        timeout_s: float | None = None,
        **options: Unpack[RouteOptions],
    ) -> router_pb2.RouteResponse:
        """One whole completion with its accounting.

        Args:
            messages: A user message, or the conversation oldest first.
            budget_key: The budget to spend from.
            timeout_s: The call's deadline, in seconds from now.
            **options: The request's other fields (`RouteOptions`): model,
                agent, max_output_tokens, temperature, metadata, the routing
                hints (prefer, task, explain, min_quality, max_cost_nano_usd,
                min_context_tokens, required_capabilities, fallback),
                additional_budget_keys and request_id. Omitted, the call gets
                a fresh request_id of its own; to retry by calling again, pass
                one (a fresh UUID per logical request, the same on every retry
                of it) and a retry is answered from the first result, never
                charged twice.

        Raises:
            faregate_client.FaregateError: a subclass per status code.
        """
        request = build_request(
            router_pb2.RouteRequest, messages, budget_key, options,
            generate_request_id=self._generate_request_ids,
        )  # fmt: skip
        try:
            return await self._stub.Route(request, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None

    def stream_route(
        self,
        messages: Messages,
        *,
        budget_key: str,
        timeout_s: float | None = None,
        **options: Unpack[RouteOptions],
    ) -> RouteStream:
        """A streamed completion: `async for text in client.stream_route(...)`.

        Takes what `route` takes.
        """
        request = build_request(
            router_pb2.StreamRouteRequest, messages, budget_key, options,
            generate_request_id=self._generate_request_ids,
        )  # fmt: skip
        return RouteStream(
            self._stub.StreamRoute(request, timeout=timeout_s, metadata=self._metadata)
        )
