"""Recorded results of requests that carried a client `request_id` (AIP-155).

A retry of a served request is answered from its record instead of being
served (and paid for) again. The record is the request's result as JSON, kept
in the state backend beside the spend it reports and written in the same
durable step, with the budget's remaining money stored apart because some
backends learn it only while committing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from faregate_server.domain import (
    AttemptOutcome,
    AttemptRecord,
    CandidateScore,
    FinishReason,
    RouteResult,
    RoutingDecision,
    TaskKind,
    Usage,
)


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A served request's result, as the state backend keeps it."""

    fingerprint: str
    """Which request this was, so a reused id with another request is caught."""
    result: str
    """The RouteResult as JSON, its decision's fields beside the answer's (as
    results were always kept), without the budget's remaining money."""
    budget_remaining_nano_usd: int


def fingerprint(serialized_request: bytes) -> str:
    """A digest of a request, its request_id left out."""
    return hashlib.sha256(serialized_request).hexdigest()


def encode_result(result: RouteResult) -> str:
    decision = result.decision
    fields = {
        "output": result.output,
        "finish_reason": result.finish_reason,
        "usage": dataclasses.asdict(result.usage),
        "cost_nano_usd": result.cost_nano_usd,
        "reserved_nano_usd": decision.reserved_nano_usd,
        "model_used": decision.model,
        "provider": decision.provider,
        "request_id": decision.request_id,
        "model_version": decision.model_version,
        "task": decision.task,
        "attempts": [dataclasses.asdict(attempt) for attempt in decision.attempts],
        "candidates": [dataclasses.asdict(candidate) for candidate in decision.candidates],
    }
    return json.dumps(fields, separators=(",", ":"))


def decode_result(stored: StoredResult) -> RouteResult:
    fields: dict[str, Any] = json.loads(stored.result)
    task = fields["task"]
    decision = RoutingDecision(
        request_id=fields["request_id"],
        model=fields["model_used"],
        provider=fields["provider"],
        model_version=fields["model_version"],
        reserved_nano_usd=fields["reserved_nano_usd"],
        task=None if task is None else TaskKind(task),
        attempts=tuple(
            AttemptRecord(**{**attempt, "outcome": AttemptOutcome(attempt["outcome"])})
            for attempt in fields["attempts"]
        ),
        candidates=tuple(CandidateScore(**candidate) for candidate in fields["candidates"]),
    )
    return RouteResult(
        decision=decision,
        output=fields["output"],
        finish_reason=FinishReason(fields["finish_reason"]),
        usage=Usage(**fields["usage"]),
        cost_nano_usd=fields["cost_nano_usd"],
        budget_remaining_nano_usd=stored.budget_remaining_nano_usd,
    )
