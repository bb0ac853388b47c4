"""Reading and judging the usage an upstream reports, before any of it is charged.

Each provider's usage block is normalised here to faregate's `Usage`, whose
`input_tokens` is every prompt token processed (the cache counts are parts
of it) and whose `reasoning_tokens` is part of `output_tokens`:
- OpenAI-compatible (`openai_usage`): input is `prompt_tokens`, cached input
  `prompt_tokens_details.cached_tokens` (a part of it, as OpenAI documents),
  reasoning `completion_tokens_details.reasoning_tokens`. The output is
  `completion_tokens`, or `total_tokens - prompt_tokens` when that is larger:
  a server that counts its reasoning outside `completion_tokens` (Gemini's
  compatible endpoint) still reports it in the total, and the total is what
  it bills. The reasoning is then at least that difference. A total below
  prompt + completion is ignored: it could only lower the charge.
- Anthropic (`anthropic_usage`): `input_tokens` excludes the cache, so input
  is `input_tokens + cache_creation_input_tokens + cache_read_input_tokens`;
  cached input is the reads, cache writes the creations, and the hour's
  writes `cache_creation.ephemeral_1h_input_tokens`. Should the breakdown and
  `cache_creation_input_tokens` disagree, the larger is the writes, and what
  the breakdown does not call five-minute writes is priced as the hour's
  (the dearer), so a disagreement never lowers the charge; without a
  breakdown every write is a five-minute one. Reasoning is
  `output_tokens_details.thinking_tokens`.
An absent optional count, a null one (the providers' types allow both) and
an absent or null details object mean 0.

An upstream's usage block is its word, not a fact, and a wrong word costs
money: counts it inflates overspend budgets, negative ones credit them, and
absurd ones (1e17 tokens) wedge them. So a report is believed only within
what the request made possible:
- each count is a JSON integer (no float, string, boolean or null) and not
  negative, and a usage block has both its input and its output count;
- no part is larger than its whole (cached input than input, reasoning than
  output);
- the input is no larger than the model's context window;
- the output is no larger than the `max_output_tokens` sent upstream;
- for a stream, their cost (every kind of token at its price) is no larger
  than the attempt's reservation (the worst case of the counted input and
  that output cap).
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

Reading a block costs a few dict lookups, judging it a few comparisons and
one price sum per answer; nothing here runs per token.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from faregate_server.domain import ImplausibleUsage, ReportedUsage, Usage, UsageFlaw
from faregate_server.money import Price

_REPORTED_VALUE_CHARS = 64


class _Missing(Enum):
    MISSING = "missing"
    NOT_AN_OBJECT = "not an object"


MISSING = _Missing.MISSING
"""A count the upstream's usage block did not have."""
_NOT_AN_OBJECT = _Missing.NOT_AN_OBJECT
"""A count inside a details object that is not a JSON object."""


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


def openai_usage(raw: object) -> ReportedUsage:
    """The usage from a chat completion's `usage` (see the module docstring):
    None when the answer has none (or an empty one)."""
    if not raw:
        return None
    if not isinstance(raw, dict):
        return reported_usage(MISSING, MISSING)
    prompt = raw.get("prompt_tokens", MISSING)
    completion = raw.get("completion_tokens", MISSING)
    cached = _part(raw.get("prompt_tokens_details"), "cached_tokens")
    reasoning = _part(raw.get("completion_tokens_details"), "reasoning_tokens")
    total = raw.get("total_tokens")
    flaw = (
        _flaw(prompt)
        or _flaw(completion)
        or _flaw(cached)
        or _flaw(reasoning)
        or (None if total is None else _flaw(total))
    )
    if flaw is None:  # every count is an int from here on
        output = completion
        if total is not None and total - prompt > completion:
            output = total - prompt
        reasoning = max(reasoning, output - completion)
        if cached <= prompt and reasoning <= output:
            return Usage(prompt, output, cached, 0, 0, reasoning)
        flaw = UsageFlaw.PARTS_OVER_WHOLE
    counts = {
        "input_tokens": prompt,
        "output_tokens": completion,
        "cached_input_tokens": cached,
        "reasoning_tokens": reasoning,
    }
    # The total, unless it says no more than its parts do.
    summed = type(prompt) is int and type(completion) is int and total == prompt + completion
    if total is not None and not summed:
        counts["total_tokens"] = total
    return ImplausibleUsage(flaw, _render(counts))


def anthropic_usage(raw: object) -> ReportedUsage:
    """The usage from a Messages answer's `usage`, or from a stream's
    message_start usage updated by its message_delta's (see the module
    docstring): None when there is none (or an empty one)."""
    if not raw:
        return None
    if not isinstance(raw, dict):
        return reported_usage(MISSING, MISSING)
    uncached = raw.get("input_tokens", MISSING)
    output = raw.get("output_tokens", MISSING)
    read = _optional(raw.get("cache_read_input_tokens"))
    created = _optional(raw.get("cache_creation_input_tokens"))
    breakdown = raw.get("cache_creation")
    five = _part(breakdown, "ephemeral_5m_input_tokens")
    hour = _part(breakdown, "ephemeral_1h_input_tokens")
    thinking = _part(raw.get("output_tokens_details"), "thinking_tokens")
    flaw = (
        _flaw(uncached)
        or _flaw(output)
        or _flaw(read)
        or _flaw(created)
        or _flaw(five)
        or _flaw(hour)
        or _flaw(thinking)
    )
    if flaw is None:  # every count is an int from here on
        if thinking <= output:
            writes = max(created, five + hour)
            hour_writes = writes - five if breakdown else 0
            return Usage(uncached + writes + read, output, read, writes, hour_writes, thinking)
        flaw = UsageFlaw.PARTS_OVER_WHOLE
    counts = {
        "input_tokens": uncached,
        "output_tokens": output,
        "cached_input_tokens": read,
        "cache_write_input_tokens": created,
        "cache_write_5m_input_tokens": five,
        "cache_write_1h_input_tokens": hour,
        "reasoning_tokens": thinking,
    }
    return ImplausibleUsage(flaw, _render(counts))


def usage_cost_nano_usd(price: Price, usage: Usage) -> int:
    """What `usage` costs at `price`: every kind of token at its rate."""
    return price.cost_nano_usd(
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_input_tokens,
        usage.cache_write_1h_input_tokens,
    )


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
    elif reserved_nano_usd is not None and usage_cost_nano_usd(price, usage) > reserved_nano_usd:
        flaw = UsageFlaw.OVER_RESERVATION
    else:
        return usage
    return ImplausibleUsage(flaw, render_usage(usage))


def render_usage(usage: Usage) -> str:
    """A believable usage's counts as a short JSON object, by faregate's
    names; the parts that are 0 are left out."""
    return _render(
        {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_write_input_tokens": usage.cache_write_input_tokens,
            "cache_write_1h_input_tokens": usage.cache_write_1h_input_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
        }
    )


def render_reported(input_tokens: object, output_tokens: object) -> str:
    """The reported counts as a short JSON object; long values are cut and
    kept as strings, absent ones left out."""
    return _render({"input_tokens": input_tokens, "output_tokens": output_tokens})


def _render(counts: dict[str, object]) -> str:
    """`counts` as a short JSON object: input_tokens and output_tokens as
    reported, the others only when they say something (not absent, not 0);
    long values cut and kept as strings."""
    kept = {
        name: _short(value)
        for name, value in counts.items()
        if value is not MISSING
        and (name in ("input_tokens", "output_tokens") or not (type(value) is int and value == 0))
    }
    return json.dumps(kept, separators=(",", ":"))


def _optional(count: Any) -> Any:
    """An optional count: absent or null is 0."""
    return 0 if count is None else count


def _part(details: Any, name: str) -> Any:
    """A count inside an optional details object: 0 when the object or the
    count is absent or null."""
    if details is None:
        return 0
    if not isinstance(details, dict):
        return _NOT_AN_OBJECT
    count = details.get(name)
    return 0 if count is None else count


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
    if isinstance(value, _Missing):
        return value.value
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON, or an int past Python's digit limit
        text = type(value).__name__
    if len(text) <= _REPORTED_VALUE_CHARS:
        return value
    return text[:_REPORTED_VALUE_CHARS] + "..."
