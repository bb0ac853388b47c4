"""gRPC health checks from tests (the health package's stub is untyped)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2

_CHECK = "/grpc.health.v1.Health/Check"


async def serving_status(channel: grpc.aio.Channel, service: str = "") -> int:
    """The server's HealthCheckResponse.ServingStatus for `service` ("" is overall)."""
    check = channel.unary_unary(
        _CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply: health_pb2.HealthCheckResponse = await check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return reply.status
