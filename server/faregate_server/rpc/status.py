"""faregate's errors on the gRPC wire: the one place a status is built.

`rich_status` renders a `FaregateError` as a gRPC status: its code, its
message, and the `google.rpc.Status` in the `grpc-status-details-bin`
trailer (built with grpcio-status) holding an `ErrorInfo` first (reason,
`ERROR_DOMAIN`, metadata), then at most one of each of `BadRequest`,
`QuotaFailure`, `PreconditionFailure` and `RetryInfo`. A retryable error
also carries the `grpc-retry-pushback-ms` trailer, ahead of the details, so
gRPC's own retry policy waits as long as RetryInfo says.

`status_for` is what a handler ends with for whatever it caught: its
deadline scope firing (a `TimeoutError`) is DEADLINE_EXCEEDED; an exception
that is no `FaregateError` is a bug, logged with its traceback under a
fresh trace id and answered INTERNAL with that id and nothing else, so no
internals reach a caller. Every status is noted for telemetry. `abort` ends
a call with it.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from faregate_server.errors import (
    ERROR_DOMAIN,
    DeadlineExceeded,
    ErrorCode,
    ErrorDetails,
    FaregateError,
    InternalError,
)
from faregate_server.telemetry.request_observation import NOT_OBSERVED, RpcObserver

logger = logging.getLogger(__name__)

RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

Trailers = tuple[tuple[str, str | bytes], ...]

# The codes share their names with gRPC's: a code gRPC lacks fails at import.
_GRPC_CODES = {code: grpc.StatusCode[code.name] for code in ErrorCode}


@dataclass(frozen=True, slots=True)
class RpcStatus:
    """A status to end a call with."""

    code: grpc.StatusCode
    message: str
    trailers: Trailers
    """The pushback trailer when retrying helps, then the rich status."""


def rich_status(error: FaregateError) -> RpcStatus:
    """The gRPC status for error, with its rich details."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        ),
        *_violations(error.details),
    ]
    pushback: Trailers = ()
    retry_after_s = error.details.retry_after_s
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(math.ceil(retry_after_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        pushback = ((RETRY_PUSHBACK_KEY, str(math.ceil(retry_after_s * 1000))),)
    code = _GRPC_CODES[error.code]
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=error.message, details=packed)
    )
    return RpcStatus(status.code, status.details, (*pushback, *status.trailing_metadata))


def _violations(details: ErrorDetails) -> list[Message]:
    """The violation details, in the order they have always been sent (an
    error carries at most one of these kinds today)."""
    messages: list[Message] = []
    if details.field_violations:
        messages.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=violation.field, description=violation.description
                    )
                    for violation in details.field_violations
                ]
            )
        )
    if details.quota_violations:
        messages.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=violation.subject, description=violation.description
                    )
                    for violation in details.quota_violations
                ]
            )
        )
    if details.precondition_violations:
        messages.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=violation.type,
                        subject=violation.subject,
                        description=violation.description,
                    )
                    for violation in details.precondition_violations
                ]
            )
        )
    return messages


def status_for(error: Exception, model: str, observation: RpcObserver = NOT_OBSERVED) -> RpcStatus:
    """The status a handler that caught error ends with, noted on the RPC's
    observation; an unexpected error is logged with its traceback.

    Args:
        error: What the handler caught.
        model: The model or route the request named, for DEADLINE_EXCEEDED's metadata.
        observation: The RPC's observation, if it has one (RouterService's do).
    """
    if isinstance(error, TimeoutError):
        error = DeadlineExceeded("the request's deadline passed", model=model)
    try:
        if not isinstance(error, FaregateError):
            raise error
        status = rich_status(error)
        reason = error.reason
    except Exception as unexpected:  # a bug, or a status that could not be built
        trace_id = uuid.uuid4().hex
        logger.error(
            "unexpected error serving a request (trace id %s)", trace_id, exc_info=unexpected
        )
        internal = InternalError(trace_id)
        status = rich_status(internal)
        reason = internal.reason
    observation.failed(status.code.name, reason)
    return status


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    error: Exception,
    model: str,
    observation: RpcObserver = NOT_OBSERVED,
) -> NoReturn:
    """Ends the call with the status for error (see `status_for`)."""
    status = status_for(error, model, observation)
    await context.abort(status.code, status.message, status.trailers)
    raise AssertionError("abort returned")  # pragma: no cover
