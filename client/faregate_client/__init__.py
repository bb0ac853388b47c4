"""faregate's typed clients, async and blocking.

async with FaregateClient("127.0.0.1:50051") as client:
    reply = await client.route("Hello!", budget_key="demo", prefer="cost")
    print(reply.output, reply.cost_nano_usd)

with SyncFaregateClient("127.0.0.1:50051") as client:
    reply = client.route("Hello!", budget_key="demo", task="explain")

Both take the request's fields as keywords (`RouteOptions`) and raise a
`FaregateError` subclass per status.

Over TLS (mutual TLS with a client certificate and key as well):

tls = ClientTls.from_files(ca_file="ca.crt", cert_file="agent.crt", key_file="agent.key")
async with FaregateClient("faregate.internal:50051", tls=tls) as client: ...
"""

from faregate_client._channel import STREAM_CHANNEL_OPTIONS, ClientTls
from faregate_client._client import FaregateClient, RouteStream
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
from faregate_client._request import Messages, RouteOptions
from faregate_client._sync_client import SyncFaregateClient, SyncRouteStream

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
    "RouteOptions",
    "RouteStream",
    "StreamInterrupted",
    "SyncFaregateClient",
    "SyncRouteStream",
    "Unauthenticated",
    "Unavailable",
]
