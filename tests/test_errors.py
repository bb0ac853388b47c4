"""errors.py is plain data: codes, reasons, metadata and typed details that
any door can render, with nothing of a wire in it."""

from __future__ import annotations

import dataclasses
import math

import pytest
from faregate_server import errors
from faregate_server.errors import (
    ErrorCode,
    ErrorDetails,
    FieldViolation,
    PreconditionViolation,
    QuotaViolation,
)


def test_error_codes_are_named_as_their_values() -> None:
    """A door looks a code up by name: the name and the value never differ."""
    assert all(code.name == code.value for code in ErrorCode)


def test_details_are_frozen_values() -> None:
    details = ErrorDetails(field_violations=(FieldViolation("a", "b"),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        details.retry_after_s = 1.0  # type: ignore[misc]
    assert details == ErrorDetails(field_violations=(FieldViolation("a", "b"),))


def test_an_invalid_request_lists_its_fields() -> None:
    error = errors.InvalidRequest({"messages": "empty", "temperature": "too hot"})
    assert error.code is ErrorCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_REQUEST"
    assert str(error) == error.message == "invalid request: messages, temperature"
    assert error.metadata == {"fields": "messages, temperature"}
    assert error.details == ErrorDetails(
        field_violations=(
            FieldViolation("messages", "empty"),
            FieldViolation("temperature", "too hot"),
        )
    )


def test_a_principal_limit_carries_its_quota_and_its_retry() -> None:
    error = errors.PrincipalConcurrencyLimited("ci", 0.5)
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED
    assert error.details == ErrorDetails(
        quota_violations=(
            QuotaViolation("principal:ci", "the principal's concurrent request limit is reached"),
        ),
        retry_after_s=0.5,
    )


def test_a_missing_budget_is_a_precondition() -> None:
    assert errors.BudgetNotFound("team").details.precondition_violations == (
        PreconditionViolation("BUDGET", "team", "no budget has this key"),
    )


@pytest.mark.parametrize(
    "error",
    [
        errors.LimitExhausted("m", math.inf),
        errors.CandidatesUnavailable("m", "why"),
        errors.UpstreamRateLimited("429", None, model="m"),
        errors.RequestInFlight("r"),
        errors.ShuttingDown("bye"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_unknown_retry_delay_suggests_a_second(error: errors.FaregateError) -> None:
    assert error.details.retry_after_s == 1.0


def test_an_error_that_retrying_cannot_fix_has_no_retry_delay() -> None:
    for error in (errors.ModelNotFound("m"), errors.BudgetExhausted("k", 0, 1)):
        assert error.details.retry_after_s is None


def test_an_internal_error_names_only_its_trace_id() -> None:
    error = errors.InternalError("abc")
    assert (error.code, error.reason) == (ErrorCode.INTERNAL, "INTERNAL")
    assert error.message == "internal error (trace id abc)"
    assert error.metadata == {"traceId": "abc"}
    assert error.details == ErrorDetails()
