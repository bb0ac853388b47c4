"""faregate's typed async client.

async with FaregateClient("127.0.0.1:50051") as client:
    reply = await client.route("Hello!", budget_key="demo")
    print(reply.output, reply.cost_nano_usd)

Over TLS (mutual TLS with a client certificate and key as well):

tls = ClientTls.from_files(ca_file="ca.crt", cert_file="agent.crt", key_file="agent.key")
async with FaregateClient("faregate.internal:50051", tls=tls) as client: ...
"""

from faregate_client._client import (
    STREAM_CHANNEL_OPTIONS,
    ClientTls,
    FaregateClient,
    Messages,
    RouteStream,
)
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
    "STREAM_CHANNEL_OPTIONS",
    "Aborted",
    "AlreadyExists",
    "BudgetExhausted",
    "ClientTls",
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
