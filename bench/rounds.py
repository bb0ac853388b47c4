"""One round of interleaved measurements of every server, plus the direct baseline.

A round runs each phase against every server back to back (and, for latency,
against the upstream directly), so the figures compared in a ratio were taken
seconds apart. `round_order` varies the server order from round to round, so
no server always goes first or always follows the same neighbour.

Phases, in order:
1. latency at each concurrency in `Settings.latency_batches`; each
   batch also yields CPU per unary request at that concurrency (at 1 every
   request pays the wake-ups alone; at 16 the server core is saturated and
   they are shared, so the two bracket the real cost);
2. saturation: a closed loop at `saturation_concurrency` for a fixed time;
3. streams of `STREAM_TOKENS` tokens, yielding CPU per relayed token;
4. tool calls (`measure_tool_calls`, also run alone by `python -m bench
   --tool-calls`): unary Routes defining five tools, answered with a tool
   call, at `tool_route_concurrency`, yielding CPU per such Route; then
   StreamRoutes defining them, answered with a tool call streamed in
   fragments, yielding CPU per streamed tool call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.load import DirectTarget, GrpcTarget, LoadResult, closed_loop
from bench.procs import cpu_time_s, own_cpu_time_s


@dataclass(frozen=True, slots=True)
class Settings:
    """How much load each phase applies; every loop is bounded in count and time."""

    rounds: int = 6
    """Six: `round_order`'s whole cycle for three servers."""
    latency_batches: tuple[tuple[int, int], ...] = ((1, 1000), (16, 1600))
    """(concurrency, calls) of each latency batch."""
    saturation_concurrency: int = 64
    saturation_duration_s: float = 2.5
    saturation_max_calls: int = 20_000
    stream_concurrency: int = 4
    stream_calls: int = 48
    tool_route_concurrency: int = 16
    """Where the plain Route row it stands beside saturates the server core."""
    tool_route_calls: int = 500
    tool_stream_concurrency: int = 4
    """As for the plain streams."""
    tool_stream_calls: int = 150
    phase_max_duration_s: float = 12.0

    @property
    def latency_concurrencies(self) -> tuple[int, ...]:
        return tuple(concurrency for concurrency, _ in self.latency_batches)


@dataclass(frozen=True, slots=True)
class Server:
    """A server under test: its name for the report, its process and a client."""

    name: str
    pid: int
    target: GrpcTarget


def round_order(servers: Sequence[Server], index: int) -> list[Server]:
    """The order of round `index` (from 0): each rotation forwards, then backwards.

    With two servers this is ABBA. With three it is ABC CBA BCA ACB CAB BAC:
    over six rounds each server takes each place twice and comes straight
    after each other server twice, so neither a place in the round nor a
    neighbour's leftovers (a warm cache, a busy disk) favours any of them.
    """
    start = (index // 2) % len(servers)
    order = [*servers[start:], *servers[:start]]
    return order if index % 2 == 0 else order[::-1]


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50_s: float
    p99_s: float

    @classmethod
    def of(cls, result: LoadResult) -> Percentiles:
        return cls(result.percentile_s(0.50), result.percentile_s(0.99))


@dataclass(frozen=True, slots=True)
class ToolCallFigures:
    """One server's tool-call figures in one round."""

    cpu_per_route_s: float
    """CPU per unary Route defining five tools, answered with a tool call."""
    cpu_per_stream_s: float
    """CPU per StreamRoute defining them, answered with a streamed tool call."""
    results: tuple[LoadResult, ...]
    """The batches, for their failures."""


@dataclass(frozen=True, slots=True)
class ServerRound:
    """One server's figures in one round."""

    cpu_per_request_s: Mapping[int, float]
    """CPU per unary Route, by concurrency."""
    cpu_per_token_s: float
    tool_calls: ToolCallFigures
    requests_per_s: float
    server_core_busy: float
    """Share of core 0 the server used during saturation (1.0 = saturated)."""
    load_core_busy: float
    """Share of core 1 the load generator plus the upstream used during saturation."""
    latency: Mapping[int, Percentiles]
    """By concurrency."""
    failed: int
    first_error: str | None


@dataclass(frozen=True, slots=True)
class Round:
    servers: Mapping[str, ServerRound]
    direct_latency: Mapping[int, Percentiles]
    """Calling the upstream directly, by concurrency."""


@dataclass(frozen=True, slots=True)
class _Measured:
    result: LoadResult
    server_cpu_s: float
    load_cpu_s: float


async def _measure(server_pid: int, upstream_pid: int, batch: Awaitable[LoadResult]) -> _Measured:
    server_before = cpu_time_s(server_pid)
    load_before = own_cpu_time_s() + cpu_time_s(upstream_pid)
    result = await batch
    return _Measured(
        result=result,
        server_cpu_s=cpu_time_s(server_pid) - server_before,
        load_cpu_s=own_cpu_time_s() + cpu_time_s(upstream_pid) - load_before,
    )


def _per_unit(cpu_s: float, units: int) -> float:
    return cpu_s / units if units else float("nan")


async def run_round(
    servers: Sequence[Server],
    direct: DirectTarget,
    upstream_pid: int,
    settings: Settings,
    *,
    progress: Callable[[str], None],
) -> Round:
    """Measures every phase on every server, in the order given."""
    latency: dict[str, dict[int, Percentiles]] = {server.name: {} for server in servers}
    cpu_per_request: dict[str, dict[int, float]] = {server.name: {} for server in servers}
    failures: dict[str, list[LoadResult]] = {server.name: [] for server in servers}
    direct_latency: dict[int, Percentiles] = {}

    for concurrency, calls in settings.latency_batches:
        progress(f"latency c={concurrency}")
        direct_result = await closed_loop(
            direct.route,
            concurrency=concurrency,
            max_calls=calls,
            max_duration_s=settings.phase_max_duration_s,
        )
        direct_latency[concurrency] = Percentiles.of(direct_result)
        for server in servers:
            measured = await _measure(
                server.pid,
                upstream_pid,
                closed_loop(
                    server.target.route,
                    concurrency=concurrency,
                    max_calls=calls,
                    max_duration_s=settings.phase_max_duration_s,
                ),
            )
            latency[server.name][concurrency] = Percentiles.of(measured.result)
            failures[server.name].append(measured.result)
            cpu_per_request[server.name][concurrency] = _per_unit(
                measured.server_cpu_s, measured.result.units
            )

    saturation: dict[str, _Measured] = {}
    progress(f"saturation c={settings.saturation_concurrency}")
    for server in servers:
        saturation[server.name] = await _measure(
            server.pid,
            upstream_pid,
            closed_loop(
                server.target.route,
                concurrency=settings.saturation_concurrency,
                max_calls=settings.saturation_max_calls,
                max_duration_s=settings.saturation_duration_s,
            ),
        )
        failures[server.name].append(saturation[server.name].result)

    cpu_per_token: dict[str, float] = {}
    progress("streams")
    for server in servers:
        measured = await _measure(
            server.pid,
            upstream_pid,
            closed_loop(
                server.target.stream,
                concurrency=settings.stream_concurrency,
                max_calls=settings.stream_calls,
                max_duration_s=settings.phase_max_duration_s,
            ),
        )
        cpu_per_token[server.name] = _per_unit(measured.server_cpu_s, measured.result.units)
        failures[server.name].append(measured.result)

    tool_calls = await measure_tool_calls(servers, upstream_pid, settings, progress=progress)

    rounds: dict[str, ServerRound] = {}
    for server in servers:
        failures[server.name] += tool_calls[server.name].results
        busy = saturation[server.name]
        elapsed_s = busy.result.elapsed_s
        errors = [r.first_error for r in failures[server.name] if r.first_error]
        rounds[server.name] = ServerRound(
            cpu_per_request_s=cpu_per_request[server.name],
            cpu_per_token_s=cpu_per_token[server.name],
            tool_calls=tool_calls[server.name],
            requests_per_s=busy.result.calls_per_s,
            server_core_busy=busy.server_cpu_s / elapsed_s,
            load_core_busy=busy.load_cpu_s / elapsed_s,
            latency=latency[server.name],
            failed=sum(r.failed for r in failures[server.name]),
            first_error=errors[0] if errors else None,
        )
    return Round(servers=rounds, direct_latency=direct_latency)


async def measure_tool_calls(
    servers: Sequence[Server],
    upstream_pid: int,
    settings: Settings,
    *,
    progress: Callable[[str], None],
) -> dict[str, ToolCallFigures]:
    """The tool-call phase on every server, in the order given: each server's
    unary batch, then each server's streamed batch."""
    routes: dict[str, _Measured] = {}
    progress(f"tool calls, unary c={settings.tool_route_concurrency}")
    for server in servers:
        routes[server.name] = await _measure(
            server.pid,
            upstream_pid,
            closed_loop(
                server.target.route_with_tools,
                concurrency=settings.tool_route_concurrency,
                max_calls=settings.tool_route_calls,
                max_duration_s=settings.phase_max_duration_s,
            ),
        )
    streams: dict[str, _Measured] = {}
    progress(f"tool calls, streamed c={settings.tool_stream_concurrency}")
    for server in servers:
        streams[server.name] = await _measure(
            server.pid,
            upstream_pid,
            closed_loop(
                server.target.stream_tool_call,
                concurrency=settings.tool_stream_concurrency,
                max_calls=settings.tool_stream_calls,
                max_duration_s=settings.phase_max_duration_s,
            ),
        )
    return {
        server.name: ToolCallFigures(
            cpu_per_route_s=_per_unit(
                routes[server.name].server_cpu_s, routes[server.name].result.units
            ),
            cpu_per_stream_s=_per_unit(
                streams[server.name].server_cpu_s, streams[server.name].result.units
            ),
            results=(routes[server.name].result, streams[server.name].result),
        )
        for server in servers
    }
