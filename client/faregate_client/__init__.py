"""faregate's typed async client.

async with FaregateClient("127.0.0.1:50051") as client:
    reply = await client.route("Hello!", budget_key="demo")
    print(reply.output, reply.cost_nano_usd)
"""

from faregate_client._client import FaregateClient, Messages, RouteStream
from faregate_client._errors import (
    Aborted,
    AlreadyExists,
    BudgetExhausted,
    DeadlineExceeded,
    FailedPrecondition,
    FaregateError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    StreamInterrupted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "Aborted",
    "AlreadyExists",
    "BudgetExhausted",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FaregateClient",
    "FaregateError",
    "Internal",
    "InvalidArgument",
    "Messages",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ResourceExhausted",
    "RouteStream",
    "StreamInterrupted",
    "Unauthenticated",
    "Unavailable",
]
