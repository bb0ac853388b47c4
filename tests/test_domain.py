"""The domain's value types: the one method that rebuilds a decision."""

from __future__ import annotations

import dataclasses

from faregate_server.domain import (
    AttemptOutcome,
    AttemptRecord,
    CandidateScore,
    RoutingDecision,
    TaskKind,
)


def _decision() -> RoutingDecision:
    # Every field set, none to its default, so a field `charged` forgot shows.
    return RoutingDecision(
        request_id="r-1",
        model="big",
        provider="openai",
        model_version="2026-01",
        reserved_nano_usd=9_000,
        task=TaskKind.REVIEW,
        attempts=(
            AttemptRecord("small", AttemptOutcome.FAILED, 0.2, 0, False, "UPSTREAM_UNAVAILABLE"),
            AttemptRecord("big", AttemptOutcome.SUCCEEDED, 0.5, 0, True, "why not"),
        ),
        candidates=(CandidateScore("big", True, "", 0.7, 9_000, 0.9, 0.1),),
    )


def test_charged_fills_in_the_serving_attempts_cost_and_keeps_everything_else() -> None:
    decision = _decision()
    expected = dataclasses.replace(
        decision,
        attempts=(
            decision.attempts[0],
            dataclasses.replace(decision.attempts[1], cost_nano_usd=4_321),
        ),
    )

    assert decision.charged(4_321) == expected


def test_charged_copies_every_field_there_is() -> None:
    # charged builds both records field by field, for speed: a field added
    # to either class must be added there too.
    assert [field.name for field in dataclasses.fields(RoutingDecision)] == [
        "request_id",
        "model",
        "provider",
        "model_version",
        "reserved_nano_usd",
        "task",
        "attempts",
        "candidates",
    ]
    assert [field.name for field in dataclasses.fields(AttemptRecord)] == [
        "model",
        "outcome",
        "latency_s",
        "cost_nano_usd",
        "hedge",
        "reason",
    ]
