"""faregate's errors, as plain data.

Every error faregate returns on purpose is a `FaregateError`. Each subclass
fixes its `ErrorCode` and its reason (the UPPER_SNAKE catalogue documented in
protos/faregate/v1/router.proto, in the domain `ERROR_DOMAIN`); each instance
carries a message, metadata (lowerCamel keys, string values) and typed
`ErrorDetails`: the fields a request got wrong, the quotas it ran into, the
state that forbids it, when to retry. Nothing here knows a wire: each door
renders these its own way, the gRPC one in rpc/status.py, and this module
imports nothing of grpc, protobuf or the rest of faregate. The tree:

    FaregateError
    ├── InvalidRequest          INVALID_ARGUMENT    INVALID_REQUEST (+ field violations)
    ├── ModelCannotServe        INVALID_ARGUMENT    MODEL_CANNOT_SERVE (+ field violations)
    ├── ModelNotFound           NOT_FOUND           MODEL_NOT_FOUND
    ├── BudgetNotFound          FAILED_PRECONDITION BUDGET_NOT_FOUND (+ precondition violations)
    ├── BudgetExhausted         RESOURCE_EXHAUSTED  BUDGET_EXHAUSTED (+ quota violations)
    ├── PoolSaturated           UNAVAILABLE         POOL_SATURATED (+ retry delay)
    ├── LimitExhausted          UNAVAILABLE         LIMIT_EXHAUSTED (+ retry delay)
    ├── CandidatesUnavailable   UNAVAILABLE         CANDIDATES_UNAVAILABLE (+ retry delay)
    ├── UpstreamRateLimited     UNAVAILABLE         UPSTREAM_RATE_LIMITED (+ retry delay)
    ├── UpstreamUnavailable     UNAVAILABLE         UPSTREAM_UNAVAILABLE
    ├── UpstreamStalled         UNAVAILABLE         UPSTREAM_STALLED
    ├── UpstreamResponseTooLarge UNAVAILABLE        UPSTREAM_RESPONSE_TOO_LARGE
    ├── UpstreamRejected        INVALID_ARGUMENT    UPSTREAM_REJECTED
    ├── UpstreamAuthFailed      FAILED_PRECONDITION UPSTREAM_AUTH_FAILED
    ├── StreamInterrupted       ABORTED             STREAM_INTERRUPTED
    ├── DeadlineExceeded        DEADLINE_EXCEEDED   DEADLINE_EXCEEDED
    ├── RequestIdReused         INVALID_ARGUMENT    REQUEST_ID_REUSED (+ field violations)
    ├── RequestInFlight         ABORTED             REQUEST_IN_FLIGHT (+ retry delay)
    ├── RequestAlreadyServed    ALREADY_EXISTS      REQUEST_ALREADY_SERVED
    ├── StateUnavailable        UNAVAILABLE         STATE_UNAVAILABLE (+ retry delay)
    ├── ShuttingDown            UNAVAILABLE         SHUTTING_DOWN (+ retry delay)
    ├── ServerOverloaded        UNAVAILABLE         SERVER_OVERLOADED (+ retry delay)
    ├── Unauthenticated         UNAUTHENTICATED
    │   ├── CredentialMissing                       API_KEY_MISSING
    │   └── CredentialInvalid                       API_KEY_INVALID
    │       └── CertificateSubjectUnknown               API_KEY_INVALID (names the subject)
    ├── PermissionDenied        PERMISSION_DENIED   NOT_GRANTED
    ├── ConfigInvalid           FAILED_PRECONDITION CONFIG_INVALID (+ precondition violations)
    ├── PrincipalLimited        RESOURCE_EXHAUSTED  (+ quota violations, retry delay)
    │   ├── PrincipalRateLimited                    PRINCIPAL_RATE_LIMITED
    │   └── PrincipalConcurrencyLimited             PRINCIPAL_CONCURRENCY_LIMITED
    └── InternalError           INTERNAL            INTERNAL

`InternalError` is not in the catalogue: it is what a door answers for an
exception that is none of these (a bug), naming a trace id and nothing of
the exception itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import ClassVar

ERROR_DOMAIN = "faregate.dev"
"""The namespace of the reasons: with it, a reason names one error worldwide."""
# Retry delay to suggest when nothing better is known.
_UNKNOWN_RETRY_S = 1.0


class ErrorCode(StrEnum):
    """The canonical codes faregate's errors use, named as gRPC and google.rpc
    name them: a gRPC door looks them up by name, another door maps them onto
    its own statuses."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """The request is bad in itself; sending it again fails again."""
    NOT_FOUND = "NOT_FOUND"
    """No model or route has the name the request gives."""
    ALREADY_EXISTS = "ALREADY_EXISTS"
    """The request was served before and is not served again."""
    PERMISSION_DENIED = "PERMISSION_DENIED"
    """The caller is known but not granted what the request names."""
    UNAUTHENTICATED = "UNAUTHENTICATED"
    """No usable credential."""
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    """A fine request that the server's state forbids."""
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    """The caller's budget or quota is spent."""
    UNAVAILABLE = "UNAVAILABLE"
    """Overloaded, stopping, or something behind faregate is down: retrying later helps."""
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    """The request's deadline passed before it was served."""
    ABORTED = "ABORTED"
    """A stream broke after output, or a twin request is still in flight."""
    INTERNAL = "INTERNAL"
    """A bug."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One request field that is wrong, and how."""

    field: str
    """The field's path in the request, e.g. `messages[2].role`."""
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One quota the request ran into."""

    subject: str
    """What is spent, e.g. `budget:team` or `principal:ci`."""
    description: str


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One piece of state that forbids the request."""

    type: str
    """The kind of state, e.g. BUDGET or CONFIG."""
    subject: str
    """Which one of that kind."""
    description: str


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """What an error says beyond its reason and message: at most one list of
    each kind of violation, and a retry delay when retrying helps."""

    field_violations: tuple[FieldViolation, ...] = ()
    quota_violations: tuple[QuotaViolation, ...] = ()
    precondition_violations: tuple[PreconditionViolation, ...] = ()
    retry_after_s: float | None = None
    """How long the caller should wait before retrying; None: retrying won't help."""


NO_DETAILS = ErrorDetails()


class FaregateError(Exception):
    """An error with a code, a catalogued reason, metadata and typed details."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self, message: str, details: ErrorDetails = NO_DETAILS, /, **metadata: str
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata
        self.details = details


def _fields(violations: Mapping[str, str]) -> ErrorDetails:
    return ErrorDetails(
        field_violations=tuple(
            FieldViolation(field, description) for field, description in violations.items()
        )
    )


MAX_SHOWN_VIOLATIONS = 16
"""The violations an InvalidRequest names, in its message, its metadata and
its field violations: a small hostile request can break a rule a hundred
thousand times, and its refusal must stay small. The rest are counted in one
more entry, under `MORE_VIOLATIONS_FIELD`. Each is named three times on
gRPC (the status message, ErrorInfo's `fields`, the BadRequest), in
trailers a client refuses past 8 KiB by default (grpc.max_metadata_size,
as RESOURCE_EXHAUSTED): 16 long ones take about 5 KiB, 32 take 10."""
MORE_VIOLATIONS_FIELD = "…"


class InvalidRequest(FaregateError):
    """The request is malformed; each violation names a field (the first
    MAX_SHOWN_VIOLATIONS of them, and how many more)."""

    code = ErrorCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"

    def __init__(self, violations: Mapping[str, str]) -> None:
        shown = dict(violations)
        if len(shown) > MAX_SHOWN_VIOLATIONS:
            more = len(shown) - MAX_SHOWN_VIOLATIONS
            shown = dict(itertools.islice(shown.items(), MAX_SHOWN_VIOLATIONS))
            shown[MORE_VIOLATIONS_FIELD] = f"and at least {more} more violations"
        fields = ", ".join(shown)
        super().__init__(f"invalid request: {fields}", _fields(shown), fields=fields)
        self.violations = shown


class ModelCannotServe(FaregateError):
    """No candidate can ever serve the request: it can never fit (context window,
    output cap, capabilities, hints), or uses a field no candidate's provider is
    sent yet."""

    code = ErrorCode.INVALID_ARGUMENT
    reason = "MODEL_CANNOT_SERVE"

    def __init__(self, model: str, field: str, description: str) -> None:
        super().__init__(
            f"model {model!r} cannot serve this request: {description}",
            _fields({field: description}),
            model=model,
        )
        self.field = field
        self.description = description


class ModelNotFound(FaregateError):
    code = ErrorCode.NOT_FOUND
    reason = "MODEL_NOT_FOUND"

    def __init__(self, model: str) -> None:
        super().__init__(f"no model or route named {model!r}", model=model)


class BudgetNotFound(FaregateError):
    code = ErrorCode.FAILED_PRECONDITION
    reason = "BUDGET_NOT_FOUND"

    def __init__(self, budget_key: str) -> None:
        violation = PreconditionViolation("BUDGET", budget_key, "no budget has this key")
        super().__init__(
            f"no budget with key {budget_key!r}",
            ErrorDetails(precondition_violations=(violation,)),
            budgetKey=budget_key,
        )
        self.budget_key = budget_key


class BudgetExhausted(FaregateError):
    code = ErrorCode.RESOURCE_EXHAUSTED
    reason = "BUDGET_EXHAUSTED"

    def __init__(self, budget_key: str, remaining_nano_usd: int, needed_nano_usd: int) -> None:
        violation = QuotaViolation(
            f"budget:{budget_key}",
            "the request's worst-case cost does not fit the remaining budget",
        )
        super().__init__(
            f"budget {budget_key!r} has {remaining_nano_usd} nano-USD left; "
            f"the cheapest candidate needs {needed_nano_usd}",
            ErrorDetails(quota_violations=(violation,)),
            budgetKey=budget_key,
            remainingNanoUsd=str(remaining_nano_usd),
        )
        self.budget_key = budget_key
        self.remaining_nano_usd = remaining_nano_usd
        self.needed_nano_usd = needed_nano_usd


class _Retryable(FaregateError):
    """An error that says when to retry."""

    def __init__(
        self,
        message: str,
        retry_after_s: float,
        details: ErrorDetails = NO_DETAILS,
        /,
        **metadata: str,
    ) -> None:
        super().__init__(message, replace(details, retry_after_s=retry_after_s), **metadata)


class PoolSaturated(_Retryable):
    code = ErrorCode.UNAVAILABLE
    reason = "POOL_SATURATED"

    def __init__(self, model: str, retry_after_s: float) -> None:
        super().__init__(
            f"model {model!r} is at capacity (workers and queue full); retry later",
            retry_after_s,
            model=model,
        )


class LimitExhausted(_Retryable):
    code = ErrorCode.UNAVAILABLE
    reason = "LIMIT_EXHAUSTED"

    def __init__(self, model: str, retry_after_s: float) -> None:
        super().__init__(
            f"the provider limits behind {model!r} are used up until their window resets",
            retry_after_s if math.isfinite(retry_after_s) else _UNKNOWN_RETRY_S,
            model=model,
        )


class CandidatesUnavailable(_Retryable):
    code = ErrorCode.UNAVAILABLE
    reason = "CANDIDATES_UNAVAILABLE"

    def __init__(self, model: str, why: str, retry_after_s: float = math.inf) -> None:
        """retry_after_s: the soonest any candidate may serve again (inf: not known)."""
        super().__init__(
            f"no candidate of {model!r} can serve now ({why}); retry later",
            retry_after_s if math.isfinite(retry_after_s) else _UNKNOWN_RETRY_S,
            model=model,
        )


class UpstreamRateLimited(_Retryable):
    code = ErrorCode.UNAVAILABLE
    reason = "UPSTREAM_RATE_LIMITED"

    def __init__(self, message: str, retry_after_s: float | None, **metadata: str) -> None:
        """retry_after_s: what the provider asked for (None: it did not say)."""
        if retry_after_s is None:
            retry_after_s = _UNKNOWN_RETRY_S
        super().__init__(message, retry_after_s, **metadata)


class UpstreamUnavailable(FaregateError):
    code = ErrorCode.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"


class UpstreamStalled(FaregateError):
    code = ErrorCode.UNAVAILABLE
    reason = "UPSTREAM_STALLED"


class UpstreamResponseTooLarge(FaregateError):
    code = ErrorCode.UNAVAILABLE
    reason = "UPSTREAM_RESPONSE_TOO_LARGE"


class UpstreamRejected(FaregateError):
    code = ErrorCode.INVALID_ARGUMENT
    reason = "UPSTREAM_REJECTED"


class UpstreamAuthFailed(FaregateError):
    code = ErrorCode.FAILED_PRECONDITION
    reason = "UPSTREAM_AUTH_FAILED"


class StreamInterrupted(FaregateError):
    code = ErrorCode.ABORTED
    reason = "STREAM_INTERRUPTED"


class DeadlineExceeded(FaregateError):
    code = ErrorCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class RequestIdReused(FaregateError):
    code = ErrorCode.INVALID_ARGUMENT
    reason = "REQUEST_ID_REUSED"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was used for a different request",
            _fields({"request_id": "was used for a different request"}),
            requestId=request_id,
        )


class RequestInFlight(_Retryable):
    code = ErrorCode.ABORTED
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

    code = ErrorCode.ALREADY_EXISTS
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
    code = ErrorCode.UNAVAILABLE
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

    code = ErrorCode.UNAVAILABLE
    reason = "SHUTTING_DOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message, _UNKNOWN_RETRY_S)


class ServerOverloaded(_Retryable):
    """This process is past what it can serve: a new call is refused at once,
    before anything is parsed, authenticated or reserved (rpc/admission.py).
    `guard` names the limit it is over: "concurrency" or "loop_lag"."""

    code = ErrorCode.UNAVAILABLE
    reason = "SERVER_OVERLOADED"


class Unauthenticated(FaregateError):
    """No usable credential. The message never repeats what was sent."""

    code = ErrorCode.UNAUTHENTICATED


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

    code = ErrorCode.PERMISSION_DENIED
    reason = "NOT_GRANTED"

    def __init__(self, principal: str, field: str, name: str) -> None:
        super().__init__(
            f"principal {principal!r} is not granted {field} {name!r}",
            principal=principal,
            field=field,
        )


class ConfigInvalid(FaregateError):
    """AdminService.ReloadConfig found the config file unusable; the old config serves on."""

    code = ErrorCode.FAILED_PRECONDITION
    reason = "CONFIG_INVALID"

    def __init__(self, path: str, problem: str) -> None:
        violation = PreconditionViolation("CONFIG", path, problem)
        super().__init__(
            f"config reload refused, the old config keeps serving: {path}: {problem}",
            ErrorDetails(precondition_violations=(violation,)),
            file=path,
        )
        self.path = path
        self.problem = problem


class PrincipalLimited(_Retryable):
    """The principal is over one of its own limits."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    limit: ClassVar[str]

    def __init__(self, principal: str, retry_after_s: float) -> None:
        violation = QuotaViolation(
            f"principal:{principal}", f"the principal's {self.limit} limit is reached"
        )
        super().__init__(
            f"principal {principal!r} is over its {self.limit} limit; retry later",
            retry_after_s,
            ErrorDetails(quota_violations=(violation,)),
            principal=principal,
        )
        self.principal = principal


class PrincipalRateLimited(PrincipalLimited):
    reason = "PRINCIPAL_RATE_LIMITED"
    limit = "request rate"


class PrincipalConcurrencyLimited(PrincipalLimited):
    reason = "PRINCIPAL_CONCURRENCY_LIMITED"
    limit = "concurrent request"


class InternalError(FaregateError):
    """What an unexpected exception is answered with: a trace id (the log
    holds the traceback under it), nothing of the exception itself."""

    def __init__(self, trace_id: str) -> None:
        super().__init__(f"internal error (trace id {trace_id})", traceId=trace_id)
