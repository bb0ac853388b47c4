"""rpc/status.py without a server: each domain error as the gRPC status
clients see, and an unexpected exception as INTERNAL that tells nothing."""

from __future__ import annotations

import logging
import math
from typing import TypeVar

import grpc
import pytest
from faregate_server import errors
from faregate_server.errors import ERROR_DOMAIN, FaregateError
from faregate_server.rpc.status import RETRY_PUSHBACK_KEY, RpcStatus, rich_status, status_for
from faregate_server.upstream.providers.base import (
    UpstreamError,
    UpstreamErrorKind,
    upstream_failure,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

DETAILS_KEY = "grpc-status-details-bin"
M = TypeVar("M", bound=Message)


def _rich(status: RpcStatus) -> status_pb2.Status:
    details = dict(status.trailers)[DETAILS_KEY]
    assert isinstance(details, bytes)
    return status_pb2.Status.FromString(details)


def _info(status: RpcStatus) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert _rich(status).details[0].Unpack(info)
    return info


def _detail(status: RpcStatus, kind: type[M]) -> M | None:
    """The one detail of kind in the status, or None."""
    found = [any_ for any_ in _rich(status).details if any_.TypeName() == kind.DESCRIPTOR.full_name]
    assert len(found) <= 1, f"more than one {kind.DESCRIPTOR.name}"
    if not found:
        return None
    detail = kind()
    found[0].Unpack(detail)
    return detail


def _every_class() -> list[type[FaregateError]]:
    classes: list[type[FaregateError]] = [FaregateError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    return classes


# Each error raised on purpose: its code, reason and metadata on the wire.
CATALOGUE: list[tuple[FaregateError, grpc.StatusCode, str, dict[str, str]]] = [
    (
        errors.InvalidRequest({"a": "x"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        {"fields": "a"},
    ),
    (
        errors.ModelCannotServe("m", "messages", "too long"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MODEL_CANNOT_SERVE",
        {"model": "m"},
    ),
    (errors.ModelNotFound("m"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", {"model": "m"}),
    (
        errors.BudgetNotFound("k"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BUDGET_NOT_FOUND",
        {"budgetKey": "k"},
    ),
    (
        errors.BudgetExhausted("k", 5, 10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "BUDGET_EXHAUSTED",
        {"budgetKey": "k", "remainingNanoUsd": "5"},
    ),
    (
        errors.PoolSaturated("m", 0.5),
        grpc.StatusCode.UNAVAILABLE,
        "POOL_SATURATED",
        {"model": "m"},
    ),
    (
        errors.LimitExhausted("m", 3.0),
        grpc.StatusCode.UNAVAILABLE,
        "LIMIT_EXHAUSTED",
        {"model": "m"},
    ),
    (
        errors.CandidatesUnavailable("m", "all open"),
        grpc.StatusCode.UNAVAILABLE,
        "CANDIDATES_UNAVAILABLE",
        {"model": "m"},
    ),
    (
        errors.StreamInterrupted("cut", model="m"),
        grpc.StatusCode.ABORTED,
        "STREAM_INTERRUPTED",
        {"model": "m"},
    ),
    (
        errors.DeadlineExceeded("late", model="m"),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "DEADLINE_EXCEEDED",
        {"model": "m"},
    ),
    (
        errors.RequestIdReused("r"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
        {"requestId": "r"},
    ),
    (
        errors.RequestInFlight("r"),
        grpc.StatusCode.ABORTED,
        "REQUEST_IN_FLIGHT",
        {"requestId": "r"},
    ),
    (
        errors.RequestAlreadyServed("r", "m", 1, 2, 3, 4),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ALREADY_SERVED",
        {
            "requestId": "r",
            "modelUsed": "m",
            "inputTokens": "1",
            "outputTokens": "2",
            "costNanoUsd": "3",
            "budgetRemainingNanoUsd": "4",
        },
    ),
    (
        errors.StateUnavailable("down", 0.5),
        grpc.StatusCode.UNAVAILABLE,
        "STATE_UNAVAILABLE",
        {},
    ),
    (errors.ShuttingDown("bye"), grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", {}),
    (
        errors.ServerOverloaded("busy", 1.0, guard="concurrency"),
        grpc.StatusCode.UNAVAILABLE,
        "SERVER_OVERLOADED",
        {"guard": "concurrency"},
    ),
    (errors.CredentialMissing(), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING", {}),
    (errors.CredentialInvalid(), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID", {}),
    (
        errors.CertificateSubjectUnknown("CN=x"),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_INVALID",
        {"certificateSubject": "CN=x"},
    ),
    (
        errors.PermissionDenied("p", "budget", "k"),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_GRANTED",
        {"principal": "p", "field": "budget"},
    ),
    (
        errors.ConfigInvalid("/etc/f.yaml", "bad"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONFIG_INVALID",
        {"file": "/etc/f.yaml"},
    ),
    (
        errors.PrincipalRateLimited("p", 0.25),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PRINCIPAL_RATE_LIMITED",
        {"principal": "p"},
    ),
    (
        errors.PrincipalConcurrencyLimited("p", 1.0),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PRINCIPAL_CONCURRENCY_LIMITED",
        {"principal": "p"},
    ),
]


@pytest.mark.parametrize(
    ("error", "code", "reason", "metadata"),
    CATALOGUE,
    ids=[type(row[0]).__name__ for row in CATALOGUE],
)
def test_each_error_has_its_code_and_error_info(
    error: FaregateError, code: grpc.StatusCode, reason: str, metadata: dict[str, str]
) -> None:
    status = rich_status(error)
    assert status.code is code
    assert status.message == error.message
    rich = _rich(status)
    assert (rich.code, rich.message) == (code.value[0], error.message)
    info = _info(status)
    assert (info.reason, info.domain, dict(info.metadata)) == (reason, ERROR_DOMAIN, metadata)


def test_the_table_covers_the_catalogue() -> None:
    """Every error class raised on purpose is in CATALOGUE but the bases and
    the upstream ones (tested through their mapping below)."""
    bases = {"FaregateError", "_Retryable", "Unauthenticated", "PrincipalLimited", "InternalError"}
    upstream = {cls.__name__ for cls in _every_class() if cls.__name__.startswith("Upstream")}
    named = {cls.__name__ for cls in _every_class()} - bases - upstream
    assert named == {type(row[0]).__name__ for row in CATALOGUE}


def test_bad_fields_are_a_bad_request() -> None:
    status = rich_status(errors.InvalidRequest({"messages": "empty", "temperature": "too hot"}))
    bad = _detail(status, error_details_pb2.BadRequest)
    assert bad is not None
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("messages", "empty"),
        ("temperature", "too hot"),
    ]
    assert status.message == "invalid request: messages, temperature"
    assert _detail(status, error_details_pb2.RetryInfo) is None
    assert RETRY_PUSHBACK_KEY not in dict(status.trailers)


def test_a_model_that_cannot_serve_names_the_field() -> None:
    bad = _detail(
        rich_status(errors.ModelCannotServe("m", "max_output_tokens", "over the cap")),
        error_details_pb2.BadRequest,
    )
    assert bad is not None
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("max_output_tokens", "over the cap")
    ]


def test_an_exhausted_budget_is_a_quota_failure_without_retry() -> None:
    status = rich_status(errors.BudgetExhausted("team", 5, 10))
    quota = _detail(status, error_details_pb2.QuotaFailure)
    assert quota is not None
    assert [v.subject for v in quota.violations] == ["budget:team"]
    assert _detail(status, error_details_pb2.RetryInfo) is None


def test_a_principal_limit_is_a_quota_failure_with_a_retry() -> None:
    status = rich_status(errors.PrincipalRateLimited("ci", 0.25))
    quota = _detail(status, error_details_pb2.QuotaFailure)
    assert quota is not None
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("principal:ci", "the principal's request rate limit is reached")
    ]
    retry = _detail(status, error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.ToNanoseconds() == 250_000_000
    assert dict(status.trailers)[RETRY_PUSHBACK_KEY] == "250"


@pytest.mark.parametrize(
    ("error", "kind", "subject"),
    [
        (errors.BudgetNotFound("team"), "BUDGET", "team"),
        (errors.ConfigInvalid("/etc/f.yaml", "models: bad"), "CONFIG", "/etc/f.yaml"),
    ],
)
def test_state_that_forbids_is_a_precondition_failure(
    error: FaregateError, kind: str, subject: str
) -> None:
    failure = _detail(rich_status(error), error_details_pb2.PreconditionFailure)
    assert failure is not None
    assert [(v.type, v.subject) for v in failure.violations] == [(kind, subject)]


@pytest.mark.parametrize(
    ("error", "pushback_ms", "delay_ns"),
    [
        (errors.PoolSaturated("m", 0.0011), "2", 1_100_000),
        (errors.LimitExhausted("m", 3.0), "3000", 3_000_000_000),
        # An unknown delay (inf) suggests a second.
        (errors.LimitExhausted("m", math.inf), "1000", 1_000_000_000),
        (errors.CandidatesUnavailable("m", "why"), "1000", 1_000_000_000),
        (errors.RequestInFlight("r"), "1000", 1_000_000_000),
        (errors.ShuttingDown("bye"), "1000", 1_000_000_000),
        (errors.StateUnavailable("down", 2.5), "2500", 2_500_000_000),
    ],
)
def test_a_retryable_error_carries_retry_info_and_the_pushback_trailer(
    error: FaregateError, pushback_ms: str, delay_ns: int
) -> None:
    status = rich_status(error)
    retry = _detail(status, error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.ToNanoseconds() == delay_ns
    # Pushback first, the rich status last: the order clients have always seen.
    assert [key for key, _ in status.trailers] == [RETRY_PUSHBACK_KEY, DETAILS_KEY]
    assert dict(status.trailers)[RETRY_PUSHBACK_KEY] == pushback_ms


def test_retry_info_is_the_last_detail() -> None:
    status = rich_status(errors.PrincipalConcurrencyLimited("p", 1.0))
    assert [any_.TypeName() for any_ in _rich(status).details] == [
        "google.rpc.ErrorInfo",
        "google.rpc.QuotaFailure",
        "google.rpc.RetryInfo",
    ]


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        (UpstreamErrorKind.RATE_LIMITED, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_RATE_LIMITED"),
        (UpstreamErrorKind.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (UpstreamErrorKind.STALLED, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_STALLED"),
        (
            UpstreamErrorKind.OVERSIZED,
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_RESPONSE_TOO_LARGE",
        ),
        (UpstreamErrorKind.REJECTED, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_REJECTED"),
        (
            UpstreamErrorKind.AUTH_FAILED,
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_AUTH_FAILED",
        ),
    ],
)
def test_upstream_failures_map_onto_the_catalogue(
    kind: UpstreamErrorKind, code: grpc.StatusCode, reason: str
) -> None:
    failure = UpstreamError(kind, "it broke", http_status=503)
    status = rich_status(upstream_failure(failure, "gpt"))
    assert status.code is code
    assert status.message == "model 'gpt': it broke"
    info = _info(status)
    assert (info.reason, dict(info.metadata)) == (reason, {"model": "gpt", "httpStatus": "503"})


@pytest.mark.parametrize(("asked_s", "pushback_ms"), [(2.0, "2000"), (None, "1000")])
def test_an_upstream_rate_limit_passes_its_retry_after_on(
    asked_s: float | None, pushback_ms: str
) -> None:
    failure = UpstreamError(UpstreamErrorKind.RATE_LIMITED, "429", retry_after_s=asked_s)
    status = rich_status(upstream_failure(failure, "gpt"))
    assert dict(status.trailers)[RETRY_PUSHBACK_KEY] == pushback_ms
    assert dict(_info(status).metadata) == {"model": "gpt"}


def test_a_timeout_is_deadline_exceeded_for_the_model() -> None:
    status = status_for(TimeoutError(), "fast")
    assert status.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert status.message == "the request's deadline passed"
    info = _info(status)
    assert (info.reason, dict(info.metadata)) == ("DEADLINE_EXCEEDED", {"model": "fast"})


def test_status_for_a_domain_error_is_its_rich_status() -> None:
    error = errors.ModelNotFound("nope")
    assert status_for(error, "nope") == rich_status(error)


def test_an_unexpected_exception_is_internal_and_tells_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "sk-live-very-secret at /srv/faregate/state.py:42"
    with caplog.at_level(logging.ERROR, logger="faregate_server.rpc.status"):
        status = status_for(RuntimeError(secret), "fast")
    assert status.code is grpc.StatusCode.INTERNAL
    info = _info(status)
    assert info.reason == "INTERNAL"
    assert info.domain == ERROR_DOMAIN
    trace_id = info.metadata["traceId"]
    assert len(trace_id) == 32
    assert status.message == f"internal error (trace id {trace_id})"
    assert list(info.metadata) == ["traceId"]
    assert [key for key, _ in status.trailers] == [DETAILS_KEY]
    assert secret not in status.message
    assert all(
        secret.encode() not in value for _, value in status.trailers if isinstance(value, bytes)
    )
    assert len(_rich(status).details) == 1
    # The log has what the caller does not: the exception, with its traceback,
    # under the same trace id.
    [record] = caplog.records
    assert trace_id in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[1] is not None
    assert secret in str(record.exc_info[1])


def test_each_unexpected_exception_gets_its_own_trace_id() -> None:
    first = _info(status_for(ValueError("a"), "")).metadata["traceId"]
    second = _info(status_for(ValueError("a"), "")).metadata["traceId"]
    assert first != second
