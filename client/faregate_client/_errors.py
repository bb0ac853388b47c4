"""Typed exceptions for faregate's error statuses, built from their rich details.

FaregateError
├── InvalidArgument      INVALID_ARGUMENT (field_violations)
├── NotFound             NOT_FOUND
├── FailedPrecondition   FAILED_PRECONDITION
├── ResourceExhausted    RESOURCE_EXHAUSTED (also gRPC's own size refusals)
│   ├── BudgetExhausted  a budget can't cover the request (budget_key)
│   └── RateLimited      the caller's own rate or concurrency limit
│                        (retry_after_s)
├── Unavailable          UNAVAILABLE (retry_after_s: retry then, if set)
├── Aborted              ABORTED: a stream broke after output, or the
│                        request_id is in flight (`StreamInterrupted` too)
├── AlreadyExists        ALREADY_EXISTS: a streamed request_id already served
├── DeadlineExceeded     DEADLINE_EXCEEDED
├── Unauthenticated      UNAUTHENTICATED: no API key, or one not recognised
├── PermissionDenied     PERMISSION_DENIED: a budget, route or model not granted
└── Internal             INTERNAL and anything else

The details come from the grpc-status-details-bin trailer, a google.rpc.Status
decoded with googleapis-common-protos alone (grpcio-status is not needed), and
the same for a grpc.aio call and a blocking one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import grpc
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class FaregateError(Exception):
    """A failed faregate call.

    Attributes:
        code: The gRPC status code.
        reason: The ErrorInfo reason, e.g. "BUDGET_EXHAUSTED" ("" if none came).
        message: The status message.
        metadata: The ErrorInfo metadata.
    """

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str]
    ) -> None:
        super().__init__(
            f"{code.name} {reason}: {message}" if reason else f"{code.name}: {message}"
        )
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata)


class InvalidArgument(FaregateError):
    field_violations: dict[str, str]
    """Field path -> what is wrong with it."""


class NotFound(FaregateError):
    pass


class FailedPrecondition(FaregateError):
    pass


class ResourceExhausted(FaregateError):
    retry_after_s: float | None
    """When faregate suggests retrying, from RetryInfo; None when it did not say."""


class BudgetExhausted(ResourceExhausted):
    @property
    def budget_key(self) -> str:
        return self.metadata.get("budgetKey", "")


class RateLimited(ResourceExhausted):
    """The caller's principal is over its request rate (PRINCIPAL_RATE_LIMITED)
    or its concurrent-request cap (PRINCIPAL_CONCURRENCY_LIMITED)."""


class Unavailable(FaregateError):
    retry_after_s: float | None
    """When faregate suggests retrying, from RetryInfo; None when it did not say."""


class Aborted(FaregateError):
    """The reason says which: STREAM_INTERRUPTED or REQUEST_IN_FLIGHT."""


StreamInterrupted = Aborted
"""The name of ABORTED's exception before request ids could be in flight."""


class AlreadyExists(FaregateError):
    """A StreamRoute whose request_id was served before; nothing was charged
    again. The first request's accounting is in `metadata` (costNanoUsd,
    inputTokens, outputTokens, modelUsed, budgetRemainingNanoUsd)."""

    @property
    def cost_nano_usd(self) -> int:
        return int(self.metadata.get("costNanoUsd", "0"))


class DeadlineExceeded(FaregateError):
    pass


class Unauthenticated(FaregateError):
    pass


class PermissionDenied(FaregateError):
    pass


class Internal(FaregateError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[FaregateError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}
_BY_REASON: dict[str, type[FaregateError]] = {
    "BUDGET_EXHAUSTED": BudgetExhausted,
    "PRINCIPAL_RATE_LIMITED": RateLimited,
    "PRINCIPAL_CONCURRENCY_LIMITED": RateLimited,
}


class FailedCall(Protocol):
    """A failed call as both grpc APIs raise it: grpc.aio.AioRpcError, and the
    grpc.RpcError of a blocking call (which is a grpc.Call too)."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Iterable[tuple[str, str | bytes]] | None: ...


def error_from_rpc(error: FailedCall) -> FaregateError:
    """The typed exception for a failed call, with its rich details unpacked."""
    reason = ""
    metadata: dict[str, str] = {}
    violations: dict[str, str] = {}
    retry_after_s: float | None = None
    for key, value in error.trailing_metadata() or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            # Unpack answers False when the detail is of another type.
            info = error_details_pb2.ErrorInfo()
            bad_request = error_details_pb2.BadRequest()
            retry_info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad_request):
                violations = {v.field: v.description for v in bad_request.field_violations}
            elif detail.Unpack(retry_info):
                retry_after_s = retry_info.retry_delay.ToNanoseconds() / 1e9
    code = error.code()
    kind = _BY_REASON.get(reason) or _BY_CODE.get(code, Internal)
    typed = kind(code, reason, error.details() or "", metadata)
    if isinstance(typed, InvalidArgument):
        typed.field_violations = violations
    if isinstance(typed, Unavailable | ResourceExhausted):
        typed.retry_after_s = retry_after_s
    return typed
