"""Overload: a burst of concurrent requests at a model with a tiny pool.

The model `slow` has 2 workers and a waiting room of 2, and the fake upstream
holds each of its requests for 200 ms, so of a burst of 200 concurrent
requests about 4 should be served and the rest rejected at once with
UNAVAILABLE / POOL_SATURATED. What matters is how fast a rejection comes back:
a gateway that sheds load must answer "no" in far less time than a request
takes, and spend far less CPU on it than on serving one, or a burst starves
the requests it did accept. The typed client is used here so the ErrorInfo
reason is read the way an agent would read it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from faregate_client import FaregateClient, FaregateError

from bench.load import (
    BENCH_API_KEY,
    BENCH_BUDGET,
    BENCH_MODEL,
    CALL_TIMEOUT_S,
    PROMPT,
    percentile,
)
from bench.probe_calls import API_KEY_ENV
from bench.procs import REPO_ROOT, Child, cpu_time_s, own_cpu_time_s
from bench.upstream import SLOW_MODEL
from tests.support.eventually import eventually

OUTCOME_OK = "OK"
OUTCOME_POOL_SATURATED = "UNAVAILABLE/POOL_SATURATED"


@dataclass(frozen=True, slots=True)
class OverloadResult:
    burst: int
    outcomes: Counter[str]
    """"OK" or "CODE/REASON" -> how many requests ended so."""
    rejection_p50_s: float
    rejection_p99_s: float
    success_p50_s: float
    success_max_s: float
    server_cpu_per_request_s: float
    """faregate's CPU over the burst divided by its requests (nearly all rejections)."""

    @property
    def rejected(self) -> int:
        return self.outcomes[OUTCOME_POOL_SATURATED]

    @property
    def succeeded(self) -> int:
        return self.outcomes[OUTCOME_OK]


async def measure_overload(target: str, server_pid: int, burst: int) -> OverloadResult:
    """Fires `burst` concurrent Route calls at the slow model and sorts the outcomes."""
    # No client request ids: the load is measured as before, with no results kept for retries.
    async with FaregateClient(target, api_key=BENCH_API_KEY, generate_request_ids=False) as client:
        # Connect and warm up first, so the burst measures faregate, not the handshake.
        await client.route(
            PROMPT, budget_key=BENCH_BUDGET, model=BENCH_MODEL, timeout_s=CALL_TIMEOUT_S
        )

        async def one() -> tuple[str, float]:
            started_s = time.perf_counter()
            try:
                await client.route(
                    PROMPT,
                    budget_key=BENCH_BUDGET,
                    model=SLOW_MODEL,
                    max_output_tokens=16,
                    timeout_s=CALL_TIMEOUT_S,
                )
                outcome = OUTCOME_OK
            except FaregateError as error:
                outcome = f"{error.code.name}/{error.reason}"
            return outcome, time.perf_counter() - started_s

        cpu_before_s = cpu_time_s(server_pid)
        async with asyncio.timeout(2 * CALL_TIMEOUT_S), asyncio.TaskGroup() as group:
            tasks = [group.create_task(one()) for _ in range(burst)]
        server_cpu_s = cpu_time_s(server_pid) - cpu_before_s
    results = [task.result() for task in tasks]
    rejections = [latency for outcome, latency in results if outcome == OUTCOME_POOL_SATURATED]
    successes = [latency for outcome, latency in results if outcome == OUTCOME_OK]
    return OverloadResult(
        burst=burst,
        outcomes=Counter(outcome for outcome, _ in results),
        rejection_p50_s=percentile(rejections, 0.50),
        rejection_p99_s=percentile(rejections, 0.99),
        success_p50_s=percentile(successes, 0.50),
        success_max_s=max(successes, default=float("nan")),
        server_cpu_per_request_s=server_cpu_s / burst,
    )


# -- server-wide admission control (SERVER_OVERLOADED) ------------------------

OUTCOME_SERVER_OVERLOADED = "UNAVAILABLE/SERVER_OVERLOADED"
# How often the saturation measurement reads faregate's loop lag gauge.
_LAG_SAMPLE_INTERVAL_S = 0.25
_ADMISSION_CALL_TIMEOUT_S = 30.0
_HTTP_PORT = re.compile(rb"telemetry HTTP \(/metrics, /healthz, /readyz\) on 127\.0\.0\.1:(\d+)")
_REFUSALS = re.compile(r'^faregate_admission_refusals_total\{guard="(\w+)"\} (\S+)$', re.M)
_LOOP_LAG = re.compile(r"^faregate_loop_lag_seconds (\S+)$", re.M)
_IN_FLIGHT = re.compile(r"^faregate_calls_in_flight (\S+)$", re.M)


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    """One overload of a faregate process past its admission limits."""

    label: str
    streams: Counter[str]
    """"OK" or "CODE/REASON" -> how many of the streams that made the load ended so."""
    calls: Counter[str]
    """The same for the Route calls sent into it."""
    refused_by_guard: dict[str, int]
    """faregate_admission_refusals_total over the measurement, by guard."""
    server_rejection_ms: tuple[float, ...]
    """The request log's latency_ms of each SERVER_OVERLOADED line, sorted."""
    client_rejection_s: tuple[float, ...]
    """The same refusals as the callers timed them, sorted."""
    client_served_s: tuple[float, ...]
    """The Route calls served, as their callers timed them, sorted."""
    max_loop_lag_s: float
    """The highest faregate_loop_lag_seconds read during the measurement."""
    max_in_flight: int
    """The highest faregate_calls_in_flight read during the measurement."""
    server_cores: float
    """faregate's CPU time over the measurement's wall time (1.0: a whole core)."""
    load_cores: float
    """The same for the bench process and the upstream, which share a core."""


class _AdmissionProbe:
    """Reads one faregate's request log and /metrics around a measurement."""

    def __init__(
        self, log_path: Path, session: aiohttp.ClientSession, server_pid: int, upstream_pid: int
    ) -> None:
        self._log_path = log_path
        self._session = session
        self._server_pid = server_pid
        self._upstream_pid = upstream_pid
        self._cpu_before_s = (0.0, 0.0)
        self._started_s = 0.0
        match = _HTTP_PORT.search(log_path.read_bytes())
        if match is None:
            raise RuntimeError(f"no telemetry HTTP port in {log_path}")
        self._metrics_url = f"http://127.0.0.1:{int(match.group(1))}/metrics"
        self._log_offset = 0
        self._refused_before: dict[str, int] = {}
        self.max_lag_s = 0.0
        self.max_in_flight = 0

    async def start(self) -> None:
        self._log_offset = self._log_path.stat().st_size
        self._refused_before = (await self._scrape())[0]
        self._cpu_before_s = self._cpu_s()
        self._started_s = time.perf_counter()

    def cores(self) -> tuple[float, float]:
        """Cores used by faregate, and by the load and upstream, since `start`."""
        elapsed_s = time.perf_counter() - self._started_s
        server_s, load_s = self._cpu_s()
        return (
            (server_s - self._cpu_before_s[0]) / elapsed_s,
            (load_s - self._cpu_before_s[1]) / elapsed_s,
        )

    def _cpu_s(self) -> tuple[float, float]:
        return cpu_time_s(self._server_pid), own_cpu_time_s() + cpu_time_s(self._upstream_pid)

    async def sample_lag(self) -> None:
        """Reads the lag gauge until cancelled."""
        while True:
            await self._scrape()
            await asyncio.sleep(_LAG_SAMPLE_INTERVAL_S)

    async def refused_since_start(self) -> dict[str, int]:
        refused = (await self._scrape())[0]
        return {
            guard: count - self._refused_before.get(guard, 0) for guard, count in refused.items()
        }

    def server_rejection_ms(self) -> tuple[float, ...]:
        with self._log_path.open("rb") as log:
            log.seek(self._log_offset)
            lines = log.read().splitlines()
        latencies = []
        for line in lines:
            if not line.startswith(b'{"ts"'):
                continue
            entry = json.loads(line)
            if entry["reason"] == "SERVER_OVERLOADED":
                latencies.append(float(entry["latency_ms"]))
        return tuple(sorted(latencies))

    async def _scrape(self) -> tuple[dict[str, int], float]:
        async with self._session.get(self._metrics_url) as response:
            text = await response.text()
        refused = {guard: round(float(count)) for guard, count in _REFUSALS.findall(text)}
        lag = _LOOP_LAG.search(text)
        lag_s = float(lag.group(1)) if lag else 0.0
        self.max_lag_s = max(self.max_lag_s, lag_s)
        in_flight = _IN_FLIGHT.search(text)
        if in_flight:
            self.max_in_flight = max(self.max_in_flight, round(float(in_flight.group(1))))
        return refused, lag_s


async def _timed(call: Awaitable[object]) -> tuple[str, float]:
    started_s = time.perf_counter()
    try:
        await call
        outcome = OUTCOME_OK
    except FaregateError as error:
        outcome = f"{error.code.name}/{error.reason}"
    return outcome, time.perf_counter() - started_s


async def _result(
    label: str,
    probe: _AdmissionProbe,
    streams: list[tuple[str, float]],
    calls: list[tuple[str, float]],
) -> AdmissionResult:
    timed = [*streams, *calls]
    server_cores, load_cores = probe.cores()
    return AdmissionResult(
        label=label,
        streams=Counter(outcome for outcome, _ in streams),
        calls=Counter(outcome for outcome, _ in calls),
        refused_by_guard=await probe.refused_since_start(),
        server_rejection_ms=probe.server_rejection_ms(),
        client_rejection_s=tuple(
            sorted(latency for outcome, latency in timed if outcome == OUTCOME_SERVER_OVERLOADED)
        ),
        client_served_s=tuple(
            sorted(latency for outcome, latency in calls if outcome == OUTCOME_OK)
        ),
        max_loop_lag_s=probe.max_lag_s,
        max_in_flight=probe.max_in_flight,
        server_cores=server_cores,
        load_cores=load_cores,
    )


async def measure_concurrency_overload(
    server: Child, upstream: Child, cap: int, model: str
) -> AdmissionResult:
    """10x overload: 10 x `cap` concurrent Route calls at `model`, whose
    upstream holds each one for seconds, at a faregate admitting `cap`."""
    async with (
        aiohttp.ClientSession() as session,
        FaregateClient(server.target, api_key=BENCH_API_KEY, generate_request_ids=False) as client,
    ):
        await client.route(
            PROMPT, budget_key=BENCH_BUDGET, model=BENCH_MODEL, timeout_s=CALL_TIMEOUT_S
        )
        probe = _AdmissionProbe(server.log_path, session, server.pid, upstream.pid)
        await probe.start()

        def call() -> Awaitable[object]:
            return client.route(
                PROMPT,
                budget_key=BENCH_BUDGET,
                model=model,
                max_output_tokens=16,
                timeout_s=_ADMISSION_CALL_TIMEOUT_S,
            )

        async with asyncio.timeout(2 * _ADMISSION_CALL_TIMEOUT_S), asyncio.TaskGroup() as group:
            sampler = group.create_task(probe.sample_lag())
            tasks = [group.create_task(_timed(call())) for _ in range(10 * cap)]
            await asyncio.gather(*tasks)
            sampler.cancel()
        return await _result(
            f"10x overload: {10 * cap} calls at a cap of {cap}",
            probe,
            [],
            [task.result() for task in tasks],
        )


async def measure_saturation(
    server: Child,
    upstream: Child,
    streams: int,
    stream_tokens: int,
    probes: int,
    clients: int,
    lag_limit_s: float,
) -> AdmissionResult:
    """Past CPU saturation: `streams` concurrent StreamRoute calls of
    `stream_tokens` tokens each (the upstream sends them as fast as it can);
    once faregate's loop lags past `lag_limit_s`, `probes` new Route calls
    from a process of their own (probe_calls.py)."""
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        pool = [
            await stack.enter_async_context(
                FaregateClient(server.target, api_key=BENCH_API_KEY, generate_request_ids=False)
            )
            for _ in range(clients)
        ]
        for client in pool:
            await client.route(
                PROMPT, budget_key=BENCH_BUDGET, model=BENCH_MODEL, timeout_s=CALL_TIMEOUT_S
            )
        probe = _AdmissionProbe(server.log_path, session, server.pid, upstream.pid)
        await probe.start()

        async def one_stream(client: FaregateClient) -> None:
            async for _ in client.stream_route(
                PROMPT,
                budget_key=BENCH_BUDGET,
                model=BENCH_MODEL,
                max_output_tokens=stream_tokens,
                timeout_s=_ADMISSION_CALL_TIMEOUT_S,
            ):
                pass

        async with asyncio.timeout(3 * _ADMISSION_CALL_TIMEOUT_S), asyncio.TaskGroup() as group:
            sampler = group.create_task(probe.sample_lag())
            stream_tasks = [
                group.create_task(_timed(one_stream(pool[index % clients])))
                for index in range(streams)
            ]
            await eventually(
                lambda: probe.max_lag_s > lag_limit_s or all(task.done() for task in stream_tasks),
                timeout_s=3 * _ADMISSION_CALL_TIMEOUT_S,
                interval_s=_LAG_SAMPLE_INTERVAL_S,
            )
            calls = await _probe_calls(server.target, probes)
            await asyncio.gather(*stream_tasks)
            sampler.cancel()
        return await _result(
            f"past CPU saturation: {streams} streams of {stream_tokens} tokens,"
            f" then {probes} calls once the loop lagged",
            probe,
            [task.result() for task in stream_tasks],
            calls,
        )


async def _probe_calls(target: str, calls: int) -> list[tuple[str, float]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.probe_calls",
        target,
        str(calls),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, API_KEY_ENV: BENCH_API_KEY},
        cwd=REPO_ROOT,
    )
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"probe_calls exited {process.returncode}")
    return [(outcome, latency_s) for outcome, latency_s in json.loads(output)]
