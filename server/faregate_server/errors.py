"""faregate's errors and their one mapping onto gRPC statuses.

Every error faregate returns on purpose is a `FaregateError`; each subclass
fixes its gRPC code and its `google.rpc.ErrorInfo` reason (the catalogue is
documented in protos/faregate/v1/router.proto). The tree:

    FaregateError
    ├── InvalidRequest          INVALID_ARGUMENT    INVALID_REQUEST (+ BadRequest)
    ├── ModelCannotServe        INVALID_ARGUMENT    MODEL_CANNOT_SERVE (+ BadRequest)
    ├── ModelNotFound           NOT_FOUND           MODEL_NOT_FOUND
    ├── BudgetNotFound          FAILED_PRECONDITION BUDGET_NOT_FOUND (+ PreconditionFailure)
    ├── BudgetExhausted         RESOURCE_EXHAUSTED  BUDGET_EXHAUSTED (+ QuotaFailure)
    ├── PoolSaturated           UNAVAILABLE         POOL_SATURATED (+ RetryInfo)
    ├── LimitExhausted          UNAVAILABLE         LIMIT_EXHAUSTED (+ RetryInfo)
    ├── CandidatesUnavailable   UNAVAILABLE         CANDIDATES_UNAVAILABLE (+ RetryInfo)
    ├── UpstreamRateLimited     UNAVAILABLE         UPSTREAM_RATE_LIMITED (+ RetryInfo)
    ├── UpstreamUnavailable     UNAVAILABLE         UPSTREAM_UNAVAILABLE
    ├── UpstreamStalled         UNAVAILABLE         UPSTREAM_STALLED
    ├── UpstreamResponseTooLarge UNAVAILABLE        UPSTREAM_RESPONSE_TOO_LARGE
    ├── UpstreamRejected        INVALID_ARGUMENT    UPSTREAM_REJECTED
    ├── UpstreamAuthFailed      FAILED_PRECONDITION UPSTREAM_AUTH_FAILED
    ├── StreamInterrupted       ABORTED             STREAM_INTERRUPTED
    ├── DeadlineExceeded        DEADLINE_EXCEEDED   DEADLINE_EXCEEDED
    ├── RequestIdReused         INVALID_ARGUMENT    REQUEST_ID_REUSED (+ BadRequest)
    ├── RequestInFlight         ABORTED             REQUEST_IN_FLIGHT (+ RetryInfo)
    ├── RequestAlreadyServed    ALREADY_EXISTS      REQUEST_ALREADY_SERVED
    ├── StateUnavailable        UNAVAILABLE         STATE_UNAVAILABLE (+ RetryInfo)
    ├── ShuttingDown            UNAVAILABLE         SHUTTING_DOWN (+ RetryInfo)
    ├── ServerOverloaded        UNAVAILABLE         SERVER_OVERLOADED (+ RetryInfo)
    ├── Unauthenticated         UNAUTHENTICATED
    │   ├── CredentialMissing                       API_KEY_MISSING
    │   └── CredentialInvalid                       API_KEY_INVALID
    │       └── CertificateSubjectUnknown               API_KEY_INVALID (names the subject)
    ├── PermissionDenied        PERMISSION_DENIED   NOT_GRANTED
    ├── ConfigInvalid           FAILED_PRECONDITION CONFIG_INVALID (+ PreconditionFailure)
    └── PrincipalLimited        RESOURCE_EXHAUSTED  (+ QuotaFailure, RetryInfo)
        ├── PrincipalRateLimited                    PRINCIPAL_RATE_LIMITED
        └── PrincipalConcurrencyLimited             PRINCIPAL_CONCURRENCY_LIMITED

Anything else that escapes a handler is a bug: `internal_error_status` turns it
into INTERNAL with a trace id and no internals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from faregate_server.upstream.providers.base import UpstreamError, UpstreamErrorKind

ERROR_DOMAIN = "faregate.dev"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Retry delay to suggest when nothing better is known.
_UNKNOWN_RETRY_S = 1.0

Metadata = tuple[tuple[str, str | bytes], ...]


class FaregateError(Exception):
    """An error with a gRPC code, an ErrorInfo reason and optional rich details."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata

    def details(self) -> Sequence[Message]:
        """Rich details besides ErrorInfo, at most one of each kind."""
        return ()

    def retry_after_s(self) -> float | None:
        """How long the caller should wait before retrying, when retrying helps."""
        return None

    def to_grpc(self) -> tuple[grpc.StatusCode, str, Metadata]:
        """The code, message and trailing metadata carrying the rich status."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        details: list[Message] = [info, *self.details()]
        trailers: list[tuple[str, str | bytes]] = []
        retry_after_s = self.retry_after_s()
        if retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(math.ceil(retry_after_s * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
            trailers.append((RETRY_PUSHBACK_KEY, str(math.ceil(retry_after_s * 1000))))
        return _pack(self.code, self.message, details, trailers)


class InvalidRequest(FaregateError):
    """The request is malformed; each violation names a field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"

    def __init__(self, violations: Mapping[str, str]) -> None:
        fields = ", ".join(violations)
        super().__init__(f"invalid request: {fields}", fields=fields)
        self.violations = dict(violations)

    def details(self) -> Sequence[Message]:
        return (_bad_request(self.violations),)


class ModelCannotServe(FaregateError):
    """The request can never fit the named model (context window or output cap)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "MODEL_CANNOT_SERVE"

    def __init__(self, model: str, field: str, description: str) -> None:
        super().__init__(f"model {model!r} cannot serve this request: {description}", model=model)
        self.field = field
        self.description = description

    def details(self) -> Sequence[Message]:
        return (_bad_request({self.field: self.description}),)


class ModelNotFound(FaregateError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "MODEL_NOT_FOUND"

    def __init__(self, model: str) -> None:
        super().__init__(f"no model or route named {model!r}", model=model)


class BudgetNotFound(FaregateError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "BUDGET_NOT_FOUND"

    def __init__(self, budget_key: str) -> None:
        super().__init__(f"no budget with key {budget_key!r}", budgetKey=budget_key)
        self.budget_key = budget_key

    def details(self) -> Sequence[Message]:
        violation = error_details_pb2.PreconditionFailure.Violation(
            type="BUDGET", subject=self.budget_key, description="no budget has this key"
        )
        return (error_details_pb2.PreconditionFailure(violations=[violation]),)


class BudgetExhausted(FaregateError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "BUDGET_EXHAUSTED"

    def __init__(self, budget_key: str, remaining_nano_usd: int, needed_nano_usd: int) -> None:
        super().__init__(
            f"budget {budget_key!r} has {remaining_nano_usd} nano-USD left; "
            f"the cheapest candidate needs {needed_nano_usd}",
            budgetKey=budget_key,
            remainingNanoUsd=str(remaining_nano_usd),
        )
        self.budget_key = budget_key
        self.remaining_nano_usd = remaining_nano_usd
        self.needed_nano_usd = needed_nano_usd

    def details(self) -> Sequence[Message]:
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=f"budget:{self.budget_key}",
            description="the request's worst-case cost does not fit the remaining budget",
        )
        return (error_details_pb2.QuotaFailure(violations=[violation]),)


class _Retryable(FaregateError):
    """An error that says when to retry."""

    def __init__(self, message: str, retry_after_s: float, **metadata: str) -> None:
        super().__init__(message, **metadata)
        self._retry_after_s = retry_after_s

    def retry_after_s(self) -> float | None:
        return self._retry_after_s


class PoolSaturated(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "POOL_SATURATED"

    def __init__(self, model: str, retry_after_s: float) -> None:
        super().__init__(
            f"model {model!r} is at capacity (workers and queue full); retry later",
            retry_after_s,
            model=model,
        )


class LimitExhausted(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "LIMIT_EXHAUSTED"

    def __init__(self, model: str, retry_after_s: float) -> None:
        super().__init__(
            f"the provider limits behind {model!r} are used up until their window resets",
            retry_after_s if math.isfinite(retry_after_s) else _UNKNOWN_RETRY_S,
            model=model,
        )


class CandidatesUnavailable(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "CANDIDATES_UNAVAILABLE"

    def __init__(self, model: str, why: str, retry_after_s: float = math.inf) -> None:
        """retry_after_s: the soonest any candidate may serve again (inf: not known)."""
        super().__init__(
            f"no candidate of {model!r} can serve now ({why}); retry later",
            retry_after_s if math.isfinite(retry_after_s) else _UNKNOWN_RETRY_S,
            model=model,
        )


class UpstreamRateLimited(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_RATE_LIMITED"


class UpstreamUnavailable(FaregateError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"


class UpstreamStalled(FaregateError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_STALLED"


class UpstreamResponseTooLarge(FaregateError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UPSTREAM_RESPONSE_TOO_LARGE"


class UpstreamRejected(FaregateError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "UPSTREAM_REJECTED"


class UpstreamAuthFailed(FaregateError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "UPSTREAM_AUTH_FAILED"


class StreamInterrupted(FaregateError):
    code = grpc.StatusCode.ABORTED
    reason = "STREAM_INTERRUPTED"


class DeadlineExceeded(FaregateError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class RequestIdReused(FaregateError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "REQUEST_ID_REUSED"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was used for a different request", requestId=request_id
        )

    def details(self) -> Sequence[Message]:
        return (_bad_request({"request_id": "was used for a different request"}),)


class RequestInFlight(_Retryable):
    code = grpc.StatusCode.ABORTED
    reason = "REQUEST_IN_FLIGHT"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"a request with request_id {request_id!r} is still in flight;"
            " retry once it has ended to get its result",
            _UNKNOWN_RETRY_S,
            requestId=request_id,
        )


class RequestAlreadyServed(FaregateError):
    """A streamed request's retry: the stream can't be replayed, its accounting can."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "REQUEST_ALREADY_SERVED"

    def __init__(
        self,
        request_id: str,
        model_used: str,
        input_tokens: int,
        output_tokens: int,
        cost_nano_usd: int,
        budget_remaining_nano_usd: int,
    ) -> None:
        super().__init__(
            f"request_id {request_id!r} was already served by {model_used!r}"
            f" for {cost_nano_usd} nano-USD; it is not served or charged again",
            requestId=request_id,
            modelUsed=model_used,
            inputTokens=str(input_tokens),
            outputTokens=str(output_tokens),
            costNanoUsd=str(cost_nano_usd),
            budgetRemainingNanoUsd=str(budget_remaining_nano_usd),
        )


class StateUnavailable(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "STATE_UNAVAILABLE"

    def __init__(self, why: str, retry_after_s: float) -> None:
        super().__init__(
            f"the shared budget store is unreachable ({why}); no spend can be"
            " reserved until it returns",
            retry_after_s,
        )


class ShuttingDown(_Retryable):
    """The server is stopping: a new request is refused, or one still running
    when the grace period ended is cut (its delivered part charged)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "SHUTTING_DOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message, _UNKNOWN_RETRY_S)


class ServerOverloaded(_Retryable):
    """This process is past what it can serve: a new call is refused at once,
    before anything is parsed, authenticated or reserved (rpc/admission.py).
    `guard` names the limit it is over: "concurrency" or "loop_lag"."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "SERVER_OVERLOADED"


class Unauthenticated(FaregateError):
    """No usable credential. The message never repeats what was sent."""

    code = grpc.StatusCode.UNAUTHENTICATED


class CredentialMissing(Unauthenticated):
    reason = "API_KEY_MISSING"

    def __init__(self) -> None:
        super().__init__(
            "no credential: send the metadata 'authorization: Bearer <api key>'"
            " or a client certificate"
        )


class CredentialInvalid(Unauthenticated):
    reason = "API_KEY_INVALID"

    def __init__(self) -> None:
        super().__init__("the API key or client certificate is not recognised")


class CertificateSubjectUnknown(CredentialInvalid):
    """A verified client certificate whose subject no principal claims.

    Unlike a key, the subject is named: the CA vouched for it, so it is no
    secret, and it is what the operator must add to certificate_subjects.
    """

    def __init__(self, subject: str) -> None:
        FaregateError.__init__(
            self,
            f"no principal claims the client certificate subject {subject!r}",
            certificateSubject=subject,
        )


class PermissionDenied(FaregateError):
    """The principal may not use what the request names."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "NOT_GRANTED"

    def __init__(self, principal: str, field: str, name: str) -> None:
        super().__init__(
            f"principal {principal!r} is not granted {field} {name!r}",
            principal=principal,
            field=field,
        )


class ConfigInvalid(FaregateError):
    """AdminService.ReloadConfig found the config file unusable; the old config serves on."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "CONFIG_INVALID"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(
            f"config reload refused, the old config keeps serving: {path}: {problem}",
            file=path,
        )
        self.path = path
        self.problem = problem

    def details(self) -> Sequence[Message]:
        violation = error_details_pb2.PreconditionFailure.Violation(
            type="CONFIG", subject=self.path, description=self.problem
        )
        return (error_details_pb2.PreconditionFailure(violations=[violation]),)


class PrincipalLimited(_Retryable):
    """The principal is over one of its own limits."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    limit: ClassVar[str]

    def __init__(self, principal: str, retry_after_s: float) -> None:
        super().__init__(
            f"principal {principal!r} is over its {self.limit} limit; retry later",
            retry_after_s,
            principal=principal,
        )
        self.principal = principal

    def details(self) -> Sequence[Message]:
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=f"principal:{self.principal}",
            description=f"the principal's {self.limit} limit is reached",
        )
        return (error_details_pb2.QuotaFailure(violations=[violation]),)


class PrincipalRateLimited(PrincipalLimited):
    reason = "PRINCIPAL_RATE_LIMITED"
    limit = "request rate"


class PrincipalConcurrencyLimited(PrincipalLimited):
    reason = "PRINCIPAL_CONCURRENCY_LIMITED"
    limit = "concurrent request"


def internal_error_status(trace_id: str) -> tuple[grpc.StatusCode, str, Metadata]:
    """INTERNAL for an unexpected exception: a trace id, nothing of the internals."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"traceId": trace_id}
    )
    message = f"internal error (trace id {trace_id})"
    return _pack(grpc.StatusCode.INTERNAL, message, [info], [])


def _bad_request(violations: Mapping[str, str]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations.items()
        ]
    )


def _pack(
    code: grpc.StatusCode,
    message: str,
    details: Sequence[Message],
    trailers: list[tuple[str, str | bytes]],
) -> tuple[grpc.StatusCode, str, Metadata]:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    trailers.append((_STATUS_DETAILS_KEY, status.SerializeToString()))
    return code, message, tuple(trailers)


def failure_reason(error: UpstreamError) -> str:
    """The ErrorInfo reason an upstream failure maps to."""
    return _UPSTREAM_FAILURES[error.kind].reason


def upstream_failure(error: UpstreamError, model: str) -> FaregateError:
    """Maps an upstream failure before any output onto faregate's catalogue."""
    metadata = {"model": model}
    if error.http_status is not None:
        metadata["httpStatus"] = str(error.http_status)
    message = f"model {model!r}: {error.message}"
    if error.kind is UpstreamErrorKind.RATE_LIMITED:
        retry_after_s = error.retry_after_s
        if retry_after_s is None:
            retry_after_s = _UNKNOWN_RETRY_S
        return UpstreamRateLimited(message, retry_after_s, **metadata)
    if error.kind is UpstreamErrorKind.STALLED:
        return UpstreamStalled(message, **metadata)
    if error.kind is UpstreamErrorKind.REJECTED:
        return UpstreamRejected(message, **metadata)
    if error.kind is UpstreamErrorKind.OVERSIZED:
        return UpstreamResponseTooLarge(message, **metadata)
    if error.kind is UpstreamErrorKind.AUTH_FAILED:
        return UpstreamAuthFailed(message, **metadata)
    return UpstreamUnavailable(message, **metadata)


_UPSTREAM_FAILURES: dict[UpstreamErrorKind, type[FaregateError]] = {
    UpstreamErrorKind.RATE_LIMITED: UpstreamRateLimited,
    UpstreamErrorKind.UNAVAILABLE: UpstreamUnavailable,
    UpstreamErrorKind.STALLED: UpstreamStalled,
    UpstreamErrorKind.OVERSIZED: UpstreamResponseTooLarge,
    UpstreamErrorKind.REJECTED: UpstreamRejected,
    UpstreamErrorKind.AUTH_FAILED: UpstreamAuthFailed,
}
