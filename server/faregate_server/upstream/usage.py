"""Judging the usage an upstream reports, before any of it is charged.

An upstream's usage block is its word, not a fact, and a wrong word costs
money: counts it inflates overspend budgets, negative ones credit them, and
absurd ones (1e17 tokens) wedge them. So a report is believed only within
what the request made possible:
- each count is a JSON integer (no float, string, boolean or null) and not
  negative, and a usage block has both counts;
- the input is no larger than the model's context window;
- the output is no larger than the `max_output_tokens` sent upstream;
- for a stream, their cost is no larger than the attempt's reservation (the
  worst case of the counted input and that output cap).
A report that breaks any rule is never charged: the request is charged its
reservation, and the report is kept in the ledger beside that charge. Every
rule but the last marks a lie, which counts as a failure of the model (see
routing/attempts.py). The last can be broken honestly: an answer cut at its
output cap whose prompt the provider counts a little higher than faregate did
(a provider's own framing, a tokenizer's gap) costs a few tokens more than was
reserved. A stream is capped at its reservation and flagged, but the model is
not blamed: faregate relays a stream and cuts it at its reserved output, so it
never spends past its reservation. A whole answer is not judged against the
reservation: a believable report is the bill, charged in full, and a cost over
the reservation is an overrun (routing/settlement.py), not a flaw.

Judging costs a few comparisons and one multiplication per answer; nothing
here runs per token.
"""

from __future__ import annotations

import json
from enum import Enum

from faregate_server.domain import ImplausibleUsage, ReportedUsage, Usage, UsageFlaw
from faregate_server.money import Price

_REPORTED_VALUE_CHARS = 64


class _Missing(Enum):
    MISSING = "missing"


MISSING = _Missing.MISSING
"""A count the upstream's usage block did not have."""


def reported_usage(input_tokens: object, output_tokens: object) -> Usage | ImplausibleUsage:
    """The usage from an upstream's two reported counts, as decoded from JSON
    (`MISSING` for an absent one): a `Usage` when both are whole and
    non-negative, else why not, with what was reported."""
    flaw = _flaw(input_tokens) or _flaw(output_tokens)
    if flaw is not None:
        return ImplausibleUsage(flaw, render_reported(input_tokens, output_tokens))
    assert isinstance(input_tokens, int)
    assert isinstance(output_tokens, int)
    return Usage(input_tokens, output_tokens)


def reported_usage_block(raw: object, input_key: str, output_key: str) -> ReportedUsage:
    """The usage from an upstream's usage block, a JSON object naming its two
    counts `input_key` and `output_key`: None when the answer has none (or an
    empty one), else as `reported_usage` makes it."""
    if not raw:
        return None
    if not isinstance(raw, dict):
        return reported_usage(MISSING, MISSING)
    return reported_usage(raw.get(input_key, MISSING), raw.get(output_key, MISSING))


def judge_usage(
    usage: ReportedUsage,
    context_window_tokens: int,
    max_output_tokens: int,
    price: Price,
    reserved_nano_usd: int | None,
) -> ReportedUsage:
    """The report as it stands, or implausible when it exceeds what the
    request made possible (see the module docstring); `reserved_nano_usd`
    is a stream's reservation, None for a whole answer, which is not judged
    against it."""
    if not isinstance(usage, Usage):
        return usage
    if usage.input_tokens > context_window_tokens:
        flaw = UsageFlaw.OVER_CONTEXT_WINDOW
    elif usage.output_tokens > max_output_tokens:
        flaw = UsageFlaw.OVER_OUTPUT_CAP
    elif reserved_nano_usd is not None and _cost_nano_usd(usage, price) > reserved_nano_usd:
        flaw = UsageFlaw.OVER_RESERVATION
    else:
        return usage
    return ImplausibleUsage(flaw, render_reported(usage.input_tokens, usage.output_tokens))


def _cost_nano_usd(usage: Usage, price: Price) -> int:
    # Every kind of input priced, as the charge prices it, so a stream whose
    # report passes here is never charged past its reservation.
    return price.cost_nano_usd(
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_input_tokens,
        usage.cache_write_1h_input_tokens,
    )


def render_reported(input_tokens: object, output_tokens: object) -> str:
    """The reported counts as a short JSON object; long values are cut and
    kept as strings, absent ones left out."""
    counts = {
        name: _short(value)
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens))
        if value is not MISSING
    }
    return json.dumps(counts, separators=(",", ":"))


def _flaw(count: object) -> UsageFlaw | None:
    if count is MISSING:
        return UsageFlaw.MISSING
    # bool is an int in Python, but `true` is no token count.
    if not isinstance(count, int) or isinstance(count, bool):
        return UsageFlaw.NOT_INTEGER
    if count < 0:
        return UsageFlaw.NEGATIVE
    return None


def _short(value: object) -> object:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON, or an int past Python's digit limit
        text = type(value).__name__
    if len(text) <= _REPORTED_VALUE_CHARS:
        return value
    return text[:_REPORTED_VALUE_CHARS] + "..."
