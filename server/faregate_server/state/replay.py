"""Recorded results of requests that carried a client `request_id` (AIP-155).

A retry of a served request is answered from its record instead of being
served (and paid for) again. The record is the request's result as JSON, kept
in the state backend beside the spend it reports and written in the same
durable step, with the budget's remaining money stored apart because some
backends learn it only while committing. An answer's tool calls, refusal and
reasoning are kept only when it has them, so a plain answer's record is what
it always was, and a record without them reads as an answer with none.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from faregate_server.content import ReasoningBlock, ToolCall
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
    if result.tool_calls:
        fields["tool_calls"] = [dataclasses.asdict(call) for call in result.tool_calls]
    if result.refusal:
        fields["refusal"] = result.refusal
    if result.reasoning:
        fields["reasoning"] = [
            {
                "text": block.text,
                "signature": block.signature,
                "redacted": base64.b64encode(block.redacted).decode(),
            }
            for block in result.reasoning
        ]
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
        tool_calls=tuple(ToolCall(**call) for call in fields.get("tool_calls", ())),
        refusal=fields.get("refusal", ""),
        reasoning=tuple(
            ReasoningBlock(block["text"], block["signature"], base64.b64decode(block["redacted"]))
            for block in fields.get("reasoning", ())
        ),
    )
