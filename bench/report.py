"""Turns the rounds into the printed report: figures, comparisons and goals.

Each figure is the median over rounds, printed with its range across rounds
so noise is visible. Each comparison of faregate with the pass-through (a
ratio, or a difference for latency) is the median of the per-round values,
so it compares measurements taken seconds apart; so is each comparison of
the faregate on sqlite state (the shipped default backend) with the
pass-through. Added latency is a server's
percentile minus the same percentile of the direct upstream calls of the same
round; in a difference between the two servers the direct baseline cancels
out. Goals are marked PASS or FAIL; the bench never fails on them. The
tool-call rows (a unary Route defining five tools, a streamed tool call)
stand beside the plain text rows with no goal of their own ("—"):
`render_tool_calls` prints them alone, for `python -m bench --tool-calls`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.faregate_config import SLOW_QUEUE, SLOW_WORKERS
from bench.load import STREAM_TOKENS
from bench.overload import OUTCOME_OK, OUTCOME_POOL_SATURATED, OverloadResult
from bench.rounds import Round, ServerRound, Settings, ToolCallFigures
from bench.upstream import SLOW_DELAY_S, SLOW_MODEL, TOOL_CALL_FRAGMENTS

FAREGATE = "faregate"
FAREGATE_SQLITE = "faregate-sqlite"
"""The same config with the default sqlite state instead of memory."""
PASSTHROUGH = "pass-through"
SERVERS = (FAREGATE, FAREGATE_SQLITE, PASSTHROUGH)
MIB = 1 << 20

CPU_PER_REQUEST_MAX_RATIO = 1.3
CPU_PER_REQUEST_SQLITE_MAX_RATIO = 1.6
SQLITE_GOAL_CONCURRENCY = 16
"""The sqlite goal is where the core is saturated and requests share ledger
transactions; at c=1 each Route pays a whole fsync'd commit alone (shown, no goal)."""
CPU_PER_TOKEN_MAX_RATIO = 1.3
NO_GOAL = "—"
"""The goal column of a row that is shown for comparison, not judged."""
ADDED_P50_MAX_EXTRA_S = 300e-6
DEFAULT_CONFIG_MAX_RSS_BYTES = 120 * MIB


@dataclass(frozen=True, slots=True)
class BenchReport:
    settings: Settings
    server_cpu: int
    load_cpu: int
    rounds: Sequence[Round]
    peak_rss_bytes: Mapping[str, int]
    """Per server, read after the rounds."""
    default_config_rss_bytes: int
    default_config_served: int
    overload: OverloadResult
    background_cores: float
    """CPU other processes used during the rounds, in cores."""
    steal_cores: float
    """CPU the hypervisor took during the rounds, in cores."""
    elapsed_s: float


Extract = Callable[[ServerRound, Round], float]
"""One figure of one server in one round (the round gives the direct baseline)."""
Render = Callable[[float], str]


def _cpu_per_request(concurrency: int) -> Extract:
    return lambda server, _: server.cpu_per_request_s[concurrency]


def _latency(concurrency: int, *, p99: bool, added: bool) -> Extract:
    def extract(server: ServerRound, round_: Round) -> float:
        percentiles = server.latency[concurrency]
        value = percentiles.p99_s if p99 else percentiles.p50_s
        if added:
            direct = round_.direct_latency[concurrency]
            value -= direct.p99_s if p99 else direct.p50_s
        return value

    return extract


def _cpu_per_token(server: ServerRound, _: Round) -> float:
    return server.cpu_per_token_s


def _cpu_per_tool_route(server: ServerRound, _: Round) -> float:
    return server.tool_calls.cpu_per_route_s


def _cpu_per_tool_stream(server: ServerRound, _: Round) -> float:
    return server.tool_calls.cpu_per_stream_s


def _tool_route_label(settings: Settings) -> str:
    return f"CPU per unary Route with 5 tools c={settings.tool_route_concurrency}"


_TOOL_STREAM_LABEL = "CPU per streamed tool call"
_TOOL_STREAM_DETAIL = f"arguments in {TOOL_CALL_FRAGMENTS} fragments"


def _requests_per_s(server: ServerRound, _: Round) -> float:
    return server.requests_per_s


def _divide(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def _median(values: Sequence[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return statistics.median(finite) if finite else math.nan


def _spread(values: Sequence[float], render_value: Render) -> str:
    """The median with the range across rounds: `812 (790..845)`."""
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return "n/a"
    if len(finite) == 1:
        return render_value(finite[0])
    low, high = render_value(min(finite)), render_value(max(finite))
    return f"{render_value(_median(finite))} ({low}..{high})"


def _us(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    micros = seconds * 1e6
    return f"{micros:.1f}" if abs(micros) < 100 else f"{micros:.0f}"


def _signed_us(seconds: float) -> str:
    text = _us(seconds)
    return text if text.startswith("-") or text == "n/a" else f"+{text}"


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def _count(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0f}"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.0f}%"


def _times(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


class _Figures:
    """Per-round values of one report, by server."""

    def __init__(self, report: BenchReport) -> None:
        self._rounds = report.rounds

    def of(self, name: str, extract: Extract) -> list[float]:
        return [extract(round_.servers[name], round_) for round_ in self._rounds]

    def ratios(self, extract: Extract, name: str = FAREGATE) -> list[float]:
        """Per round, a faregate's figure over the pass-through's."""
        return [
            _divide(extract(r.servers[name], r), extract(r.servers[PASSTHROUGH], r))
            for r in self._rounds
        ]

    def differences(self, extract: Extract) -> list[float]:
        return [
            extract(r.servers[FAREGATE], r) - extract(r.servers[PASSTHROUGH], r)
            for r in self._rounds
        ]


def render(report: BenchReport) -> str:
    """The whole report as text."""
    lines = [
        "",
        "faregate bench",
        f"  {len(report.rounds)} interleaved rounds; servers on cpu {report.server_cpu}, "
        f"upstream + load generator on cpu {report.load_cpu}; {report.elapsed_s:.0f} s in all.",
        "  Figures: median over rounds (min..max). Added latency = through the server "
        "minus direct to the upstream, same round.",
        f"  Other processes used {max(0.0, report.background_cores):.2f} cores during the "
        f"rounds (steal {report.steal_cores:.2f}); above ~0.05 expect noisier figures.",
        "",
        *_figures_table(report),
        "",
        *_direct_lines(report),
        "",
        *_goals_table(report),
        "",
        *_overload_lines(report),
        *_failure_lines(report),
    ]
    return "\n".join(lines)


def _figures_table(report: BenchReport) -> list[str]:
    settings = report.settings
    figures = _Figures(report)
    rows: list[tuple[str, Extract, Render]] = [
        (f"CPU per unary Route c={c} (µs)", _cpu_per_request(c), _us)
        for c in settings.latency_concurrencies
    ]
    rows += [
        (f"CPU per relayed token, {STREAM_TOKENS}-token stream (µs)", _cpu_per_token, _us),
        (f"{_tool_route_label(settings)} (µs)", _cpu_per_tool_route, _us),
        (f"{_TOOL_STREAM_LABEL}, {_TOOL_STREAM_DETAIL} (µs)", _cpu_per_tool_stream, _us),
        (
            f"max unary requests/s (c={settings.saturation_concurrency})",
            _requests_per_s,
            _count,
        ),
        ("  cpu busy meanwhile: server core", lambda s, _: s.server_core_busy, _percent),
        ("  cpu busy meanwhile: load + upstream core", lambda s, _: s.load_core_busy, _percent),
    ]
    for concurrency in settings.latency_concurrencies:
        for tail in (False, True):
            label = f"{'p99' if tail else 'p50'} added latency c={concurrency} (µs)"
            rows.append((label, _latency(concurrency, p99=tail, added=True), _us))
    names = SERVERS
    table: list[tuple[str, ...]] = [("", *names)]
    table += [
        (label, *(_spread(figures.of(name, extract), render_value) for name in names))
        for label, extract, render_value in rows
    ]
    for concurrency in settings.latency_concurrencies:
        p50 = _latency(concurrency, p99=False, added=False)
        p99 = _latency(concurrency, p99=True, added=False)
        table.append(
            (
                f"p50 / p99 end-to-end c={concurrency} (µs)",
                *(
                    f"{_us(_median(figures.of(name, p50)))} / {_us(_median(figures.of(name, p99)))}"
                    for name in names
                ),
            )
        )
    table.append(
        ("peak RSS, VmHWM (MiB)", *(f"{report.peak_rss_bytes[name] / MIB:.1f}" for name in names))
    )
    return align(table)


def _direct_lines(report: BenchReport) -> list[str]:
    parts = []
    for concurrency in report.settings.latency_concurrencies:
        p50 = _median([r.direct_latency[concurrency].p50_s for r in report.rounds])
        p99 = _median([r.direct_latency[concurrency].p99_s for r in report.rounds])
        parts.append(f"c={concurrency} p50 {_us(p50)} µs, p99 {_us(p99)} µs")
    return ["Direct to the upstream with aiohttp (the baseline): " + "; ".join(parts)]


def _goals_table(report: BenchReport) -> list[str]:
    settings = report.settings
    figures = _Figures(report)
    table: list[tuple[str, ...]] = [
        ("faregate vs pass-through, per round", "median (min..max)", "goal", "")
    ]

    def ratio_row(
        label: str,
        extract: Extract,
        limit: float | None,
        name: str = FAREGATE,
        *,
        no_goal: str = "",
    ) -> None:
        ratios = figures.ratios(extract, name)
        goal = no_goal if limit is None else f"<= {limit:.2f}x"
        verdict = "" if limit is None else _verdict(_median(ratios) <= limit)
        table.append((label, _spread(ratios, _times), goal, verdict))

    for concurrency in settings.latency_concurrencies:
        ratio_row(
            f"CPU per unary Route c={concurrency}",
            _cpu_per_request(concurrency),
            CPU_PER_REQUEST_MAX_RATIO,
        )
    ratio_row(_tool_route_label(settings), _cpu_per_tool_route, None, no_goal=NO_GOAL)
    for concurrency in settings.latency_concurrencies:
        ratio_row(
            f"CPU per unary Route c={concurrency}, sqlite state",
            _cpu_per_request(concurrency),
            CPU_PER_REQUEST_SQLITE_MAX_RATIO if concurrency == SQLITE_GOAL_CONCURRENCY else None,
            FAREGATE_SQLITE,
        )
    ratio_row("CPU per relayed token", _cpu_per_token, CPU_PER_TOKEN_MAX_RATIO)
    ratio_row(_TOOL_STREAM_LABEL, _cpu_per_tool_stream, None, no_goal=NO_GOAL)
    ratio_row("max unary requests/s", _requests_per_s, None)
    for concurrency in settings.latency_concurrencies:
        p50 = figures.differences(_latency(concurrency, p99=False, added=False))
        p99 = figures.differences(_latency(concurrency, p99=True, added=False))
        table.append(
            (
                f"p50 added latency c={concurrency}, faregate - pass-through (µs)",
                _spread(p50, _signed_us),
                f"<= +{ADDED_P50_MAX_EXTRA_S * 1e6:.0f}",
                _verdict(_median(p50) <= ADDED_P50_MAX_EXTRA_S),
            )
        )
        table.append(
            (
                f"p99 added latency c={concurrency}, faregate - pass-through (µs)",
                _spread(p99, _signed_us),
                "",
                "",
            )
        )
    rss_ratio = _divide(report.peak_rss_bytes[FAREGATE], report.peak_rss_bytes[PASSTHROUGH])
    table.append(("peak RSS, bench config", _times(rss_ratio), "", ""))
    table.append(
        (
            f"peak RSS (MiB), default config, {report.default_config_served} requests served",
            f"{report.default_config_rss_bytes / MIB:.1f}",
            f"<= {DEFAULT_CONFIG_MAX_RSS_BYTES / MIB:.0f}",
            _verdict(report.default_config_rss_bytes <= DEFAULT_CONFIG_MAX_RSS_BYTES),
        )
    )
    saturated = max(settings.latency_concurrencies)
    return [
        *align(table),
        f"Note: at c={saturated} the closed loop keeps the server core busy, so latency there "
        f"is mostly queueing: about {saturated} x CPU per request.",
        f"With sqlite state the goal is at c={SQLITE_GOAL_CONCURRENCY}, where concurrent "
        "requests share ledger transactions; at c=1 each Route waits for an fsync'd "
        "commit of its own.",
    ]


def render_tool_calls(
    rounds: Sequence[Mapping[str, ToolCallFigures]], settings: Settings, names: Sequence[str]
) -> str:
    """The tool-call rows alone: each server's CPU (median over rounds, with
    the range), then faregate's per-round ratio to the pass-through."""
    rows: list[tuple[str, Callable[[ToolCallFigures], float]]] = [
        (_tool_route_label(settings), lambda figures: figures.cpu_per_route_s),
        (f"{_TOOL_STREAM_LABEL}, {_TOOL_STREAM_DETAIL}", lambda figures: figures.cpu_per_stream_s),
    ]
    table: list[tuple[str, ...]] = [("", *names, f"{FAREGATE} / {PASSTHROUGH}")]
    for label, extract in rows:
        ratios = [
            _divide(extract(round_[FAREGATE]), extract(round_[PASSTHROUGH])) for round_ in rounds
        ]
        table.append(
            (
                f"{label} (µs)",
                *(_spread([extract(round_[name]) for round_ in rounds], _us) for name in names),
                _spread(ratios, _times),
            )
        )
    results = [result for round_ in rounds for f in round_.values() for result in f.results]
    failed = sum(result.failed for result in results)
    lines = [
        "",
        f"faregate bench, tool calls only: {len(rounds)} interleaved rounds",
        "",
        *align(table),
    ]
    if failed:
        first = next(result.first_error for result in results if result.first_error)
        lines.append(f"WARNING: {failed} calls failed; the first: {first}")
    return "\n".join(lines)


def _overload_lines(report: BenchReport) -> list[str]:
    result = report.overload
    saturated = max(report.settings.latency_concurrencies)
    served_cpu_s = _median(_Figures(report).of(FAREGATE, _cpu_per_request(saturated)))
    others = {
        outcome: count
        for outcome, count in result.outcomes.items()
        if outcome not in (OUTCOME_OK, OUTCOME_POOL_SATURATED)
    }
    lines = [
        f"Overload: a burst of {result.burst} concurrent Route calls at model "
        f"{SLOW_MODEL!r} ({SLOW_WORKERS} workers, queue {SLOW_QUEUE}, upstream "
        f"{SLOW_DELAY_S * 1000:.0f} ms)",
        f"  served:   {result.succeeded:4d}   p50 {_ms(result.success_p50_s)} ms, "
        f"max {_ms(result.success_max_s)} ms",
        f"  rejected: {result.rejected:4d}   UNAVAILABLE/POOL_SATURATED, "
        f"p50 {_ms(result.rejection_p50_s)} ms, p99 {_ms(result.rejection_p99_s)} ms",
        f"  faregate CPU per request of the burst: {_us(result.server_cpu_per_request_s)} µs "
        f"(a served unary Route at c={saturated}: {_us(served_cpu_s)} µs)",
    ]
    if others:
        listed = ", ".join(f"{outcome}: {count}" for outcome, count in sorted(others.items()))
        lines.append(f"  other outcomes: {listed}")
    return lines


def _failure_lines(report: BenchReport) -> list[str]:
    lines = []
    for name in SERVERS:
        failed = sum(r.servers[name].failed for r in report.rounds)
        if failed:
            errors = [r.servers[name].first_error for r in report.rounds]
            first = next((error for error in errors if error), "")
            lines.append(f"WARNING: {failed} calls to {name} failed; the first: {first}")
    return ["", *lines] if lines else []


def align(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Left-aligns the first column, right-aligns the others, rules off the header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        lines.append(f"{row[0].ljust(widths[0])}  {'  '.join(cells)}".rstrip())
        if index == 0:
            lines.append("-" * len(lines[-1]))
    return lines
