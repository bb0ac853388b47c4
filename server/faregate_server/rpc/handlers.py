"""RouterService's method handlers, registered on the gRPC server.

They are the generated ones but for one thing: a request whose bytes don't
parse as its message gets INVALID_ARGUMENT (INVALID_REQUEST, with a
BadRequest) like any other bad request, where gRPC itself would answer
UNKNOWN with the protobuf exception's text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from faregate.v1 import router_pb2
from google.protobuf.message import DecodeError, Message

from faregate_server.rpc.router import RouterServicer

M = TypeVar("M", bound=Message)
Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class _Undecodable:
    """Stands in for a request whose bytes did not parse."""

    __slots__ = ("message_name",)

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def register_router_service(server: grpc.aio.Server, servicer: RouterServicer) -> None:
    """Serves `servicer` as faregate.v1.RouterService on `server`."""
    route = router_pb2.RouteRequest
    stream = router_pb2.StreamRouteRequest
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Route": grpc.unary_unary_rpc_method_handler(
            _refusing_undecodable(servicer, "Route"),
            request_deserializer=_decoder(route),
            response_serializer=router_pb2.RouteResponse.SerializeToString,
        ),
        "StreamRoute": grpc.unary_stream_rpc_method_handler(
            _refusing_undecodable(servicer, "StreamRoute"),
            request_deserializer=_decoder(stream),
            response_serializer=router_pb2.StreamRouteResponse.SerializeToString,
        ),
    }
    name = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def _decoder(message_type: type[M]) -> Callable[[bytes], M | _Undecodable]:
    def decode(data: bytes) -> M | _Undecodable:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return _Undecodable(message_type.DESCRIPTOR.name)

    return decode


def _refusing_undecodable(servicer: RouterServicer, method: str) -> Behavior:
    behavior: Behavior = getattr(servicer, method)

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await servicer.refuse_undecodable(method, request.message_name, context)
        return await behavior(request, context)

    return handle
