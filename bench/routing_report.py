"""Turns the routing simulation's outcomes into its printed section.

One table puts the policies side by side; one per scored policy shows, for
each kind of task as written, how faregate classified and served it; the
goals close the section, marked PASS or FAIL (report only, the bench exits 0):

- a scored policy costs at most `COST_GOAL_MAX_RATIO` of always-best;
- its share of requests meeting their floor is at least always-best's minus
  `FLOOR_TOLERANCE`, counting rejections as misses (as asked), and, stricter,
  counting only the requests each policy served;
- it rejects fewer requests than always-best from the first request
  always-best was refused for want of pool capacity on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from faregate_server.domain import TaskKind

from bench.load import percentile
from bench.report import align
from bench.routing_setup import (
    ALWAYS_BEST,
    BUDGET_USD,
    EASY_FLOOR,
    END_RATE_PER_S,
    HARD_FLOOR,
    HARD_TASKS,
    MODELS,
    OUTPUT_TOKENS,
    POOL_CAPACITY_PER_MINUTE,
    REQUESTS,
    START_RATE_PER_S,
    TUNED_ROUTING,
    WAVE,
    PolicyResult,
    floor,
)

COST_GOAL_MAX_RATIO = 0.60
FLOOR_TOLERANCE = 0.02
_LIMIT_EXHAUSTED = "LIMIT_EXHAUSTED"


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.1f}%"


def _usd(nano_usd: int) -> str:
    return f"${nano_usd / 1e9:,.2f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def first_shortage(results: Sequence[PolicyResult]) -> int | None:
    """Index of always-best's first request refused for want of pool capacity."""
    best = next(result for result in results if result.policy.name == ALWAYS_BEST)
    return next(
        (i for i, outcome in enumerate(best.outcomes) if outcome.reason == _LIMIT_EXHAUSTED),
        None,
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of one policy."""

    cost_nano_usd: int
    quality_served: float
    """Mean quality of the models that served, over requests served."""
    floor_share: float
    """Requests served at or above their floor, of all requests."""
    floor_share_served: float
    """The same, of requests served."""
    rejected: int
    rejected_after_shortage: int
    reasons: Counter[str]
    model_shares: Mapping[str, float]
    """Of all requests, by serving model."""
    latency_p50_s: float
    latency_p95_s: float
    """Modelled, over requests served."""
    per_request_s: float
    """Wall time of the in-process run over its requests."""

    @classmethod
    def of(cls, result: PolicyResult, shortage: int | None) -> Summary:
        outcomes = result.outcomes
        served = [outcome for outcome in outcomes if outcome.served]
        latencies = [outcome.modelled_latency_s for outcome in served]
        qualities = [MODELS[outcome.model].quality for outcome in served]
        meets = sum(1 for outcome in outcomes if outcome.meets_floor)
        after = outcomes[shortage:] if shortage is not None else ()
        by_model = Counter(outcome.model for outcome in served)
        return cls(
            cost_nano_usd=sum(outcome.cost_nano_usd for outcome in outcomes),
            quality_served=sum(qualities) / len(qualities) if qualities else math.nan,
            floor_share=_share(meets, len(outcomes)),
            floor_share_served=_share(meets, len(served)),
            rejected=len(outcomes) - len(served),
            rejected_after_shortage=sum(1 for outcome in after if not outcome.served),
            reasons=Counter(outcome.reason for outcome in outcomes if not outcome.served),
            model_shares={name: _share(by_model[name], len(outcomes)) for name in MODELS},
            latency_p50_s=percentile(latencies, 0.50),
            latency_p95_s=percentile(latencies, 0.95),
            per_request_s=result.elapsed_s / len(outcomes),
        )


def render(results: Sequence[PolicyResult]) -> str:
    """The section as text."""
    shortage = first_shortage(results)
    summaries = {result.policy.name: Summary.of(result, shortage) for result in results}
    lines = [
        "",
        *_header(),
        "",
        *_policies_table(summaries, shortage),
        "",
    ]
    for result in results:
        if result.policy.scored:
            lines += [*_by_task(result), ""]
    lines += _goals(summaries, shortage)
    return "\n".join(lines)


def _header() -> list[str]:
    models = "; ".join(
        f"{m.name} ${m.input_usd_per_mtok:g}/${m.output_usd_per_mtok:g} per Mtok, quality "
        f"{m.quality}, {m.pool_units_per_1k_tokens / 1000:g} pool unit/token"
        for m in MODELS.values()
    )
    hard = ", ".join(sorted(task.value for task in HARD_TASKS))
    return [
        f"Routing simulation: {REQUESTS:,} requests in process, arrivals ramping "
        f"{START_RATE_PER_S:g} -> {END_RATE_PER_S:g}/s of simulated time in waves of {WAVE}",
        f"  {models}",
        f"  One limit pool of {POOL_CAPACITY_PER_MINUTE:,} weighted tokens per minute shared by "
        f"all three; one ${BUDGET_USD} budget (never exhausted here); every answer "
        f"{OUTPUT_TOKENS} tokens.",
        f"  Quality floors: {hard} >= {HARD_FLOOR}; others >= {EASY_FLOOR}. A rejected "
        "request misses its floor.",
        f"  faregate (tuned): routing {dict(TUNED_ROUTING)}; the defaults are task_weight 8, "
        "score_margin 0.1.",
        "  scarcity_k stays 1: with one pool behind every candidate its multiplier is the same "
        "for all and cannot change the ranking.",
        "  Latency is modelled (ttft + prefill x input tokens + per-token x output tokens), "
        "not measured.",
    ]


Cell = Callable[[Summary], str]


def _policies_table(summaries: Mapping[str, Summary], shortage: int | None) -> list[str]:
    best = summaries[ALWAYS_BEST]
    since = "never" if shortage is None else f"from request {shortage + 1}"
    reasons = sorted({reason for summary in summaries.values() for reason in summary.reasons})
    rows: list[tuple[str, ...]] = [("", *summaries)]

    def row(label: str, cell: Cell) -> None:
        rows.append((label, *(cell(summary) for summary in summaries.values())))

    def reason_cell(reason: str) -> Cell:
        return lambda summary: str(summary.reasons[reason])

    def model_cell(name: str) -> Cell:
        return lambda summary: _percent(summary.model_shares[name])

    row("total cost", lambda s: _usd(s.cost_nano_usd))
    row("  vs always-best", lambda s: f"{s.cost_nano_usd / best.cost_nano_usd:.0%}")
    row("average quality served", lambda s: f"{s.quality_served:.3f}")
    row("meets its floor, of all requests", lambda s: _percent(s.floor_share))
    row("meets its floor, of requests served", lambda s: _percent(s.floor_share_served))
    row("rejected (any error)", lambda s: str(s.rejected))
    for reason in reasons:
        row(f"  {reason}", reason_cell(reason))
    row(f"rejected once the pool ran short ({since})", lambda s: str(s.rejected_after_shortage))
    for name in MODELS:
        row(f"served by {name}", model_cell(name))
    row(
        "p50 / p95 modelled latency (s)",
        lambda s: f"{s.latency_p50_s:.2f} / {s.latency_p95_s:.2f}",
    )
    row("in-process wall time per request (µs)", lambda s: f"{s.per_request_s * 1e6:.0f}")
    return align(rows)


def _by_task(result: PolicyResult) -> list[str]:
    """Per task as written: how faregate classified and served it."""
    rows: list[tuple[str, ...]] = [
        (
            f"{result.policy.name}, by task as written",
            "requests",
            "routed as it",
            *(name.removeprefix("sim-") for name in MODELS),
            "rejected",
            "meets floor",
        )
    ]
    for task in TaskKind:
        outcomes = [outcome for outcome in result.outcomes if outcome.task is task]
        if not outcomes:
            continue
        total = len(outcomes)
        models = Counter(outcome.model for outcome in outcomes)
        rows.append(
            (
                f"{task.value} (floor {floor(task)})",
                str(total),
                _percent(_share(sum(o.classified is task for o in outcomes), total)),
                *(_percent(_share(models[name], total)) for name in MODELS),
                _percent(_share(models[""], total)),
                _percent(_share(sum(o.meets_floor for o in outcomes), total)),
            )
        )
    return align(rows)


def _goals(summaries: Mapping[str, Summary], shortage: int | None) -> list[str]:
    best = summaries[ALWAYS_BEST]
    tolerance = f"{FLOOR_TOLERANCE * 100:g} pts"
    rows: list[tuple[str, ...]] = [("goals (report only)", "value", "")]
    for name, summary in summaries.items():
        if name in (ALWAYS_BEST,) or not name.startswith("faregate"):
            continue
        ratio = summary.cost_nano_usd / best.cost_nano_usd
        rows += [
            (
                f"{name}: cost <= {COST_GOAL_MAX_RATIO:.0%} of always-best's",
                f"{ratio:.0%}",
                _verdict(ratio <= COST_GOAL_MAX_RATIO),
            ),
            (
                f"  floor met, of all requests, >= always-best's "
                f"{_percent(best.floor_share)} - {tolerance}",
                _percent(summary.floor_share),
                _verdict(summary.floor_share >= best.floor_share - FLOOR_TOLERANCE),
            ),
            (
                f"  stricter: floor met, of requests served, >= always-best's "
                f"{_percent(best.floor_share_served)} - {tolerance}",
                _percent(summary.floor_share_served),
                _verdict(summary.floor_share_served >= best.floor_share_served - FLOOR_TOLERANCE),
            ),
            (
                f"  rejects fewer once the pool ran short than always-best's "
                f"{best.rejected_after_shortage}",
                str(summary.rejected_after_shortage),
                _verdict(
                    shortage is not None
                    and summary.rejected_after_shortage < best.rejected_after_shortage
                ),
            ),
        ]
    return align(rows)
