"""The gRPC interceptor that observes every RouterService RPC.

It wraps each RouterService method handler once (cached per method) so that
the whole call, the servicer's validation and error mapping included, runs
inside one `RequestObservation`: begun before the servicer sees the request,
ended after its last message or its status. Other services (health,
reflection, admin) pass through untouched. It is installed only when some
telemetry is on.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc

from faregate_server.telemetry.observation import Telemetry

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
Behavior: TypeAlias = Callable[[Any, Any], Any]


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, telemetry: Telemetry, service: str) -> None:
        self._telemetry = telemetry
        self._prefix = f"/{service}/"
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method[1:], handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        telemetry = self._telemetry
        if handler.unary_unary is not None:
            unary: Behavior = handler.unary_unary

            async def observed_unary(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                observation, token, span_token = telemetry.begin(
                    method, cast(Any, context.invocation_metadata())
                )
                error: BaseException | None = None
                try:
                    return await unary(request, context)
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    telemetry.end(observation, token, span_token, error)

            return grpc.unary_unary_rpc_method_handler(
                observed_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            streaming: Behavior = handler.unary_stream

            async def observed_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> None:
                observation, token, span_token = telemetry.begin(
                    method, cast(Any, context.invocation_metadata())
                )
                error: BaseException | None = None
                try:
                    result = streaming(request, context)
                    if inspect.isasyncgen(result):
                        async for response in result:
                            await context.write(response)
                    else:
                        await result
                except BaseException as raised:
                    error = raised
                    raise
                finally:
                    telemetry.end(observation, token, span_token, error)

            return grpc.unary_stream_rpc_method_handler(
                observed_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
