"""Reserve + commit (with its ledger record) per state backend (not a test).

Each backend serves a closed loop of settle cycles through the StateStore
interface: reserve a worst case, commit a cost with its spend record. At
concurrency 1 a cycle pays a whole durable commit (SQLite) or two round trips
(Redis, on a redis-server on loopback started here); at 64 concurrent cycles
the SQLite ledger's group commit shares each transaction. Run alone:
`python -m bench.state`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from faregate_server.clock import SystemClock
from faregate_server.config.load import parse_config
from faregate_server.config.schema import StateBackend
from faregate_server.state.ledger import SpendRecord
from faregate_server.state.opening import open_state
from faregate_server.state.store import LocalState

from bench.report import align
from tests.support.redis_server import RedisServer

_CYCLES = {1: 2_000, 64: 20_000}
_MAX_PHASE_S = 10.0


@dataclass(frozen=True, slots=True)
class StateResult:
    backend: str
    concurrency: int
    cycles: int
    per_second: float
    p50_us: float
    p99_us: float
    transactions: int


async def _measure(
    backend: StateBackend, concurrency: int, scratch: Path, redis_url: str
) -> StateResult:
    state = {
        "backend": backend.value,
        "path": str(scratch / f"{backend}-{concurrency}.db"),
        "redis": {"url": redis_url, "namespace": f"bench-{concurrency}"},
    }
    config = parse_config(
        yaml.safe_dump(
            {
                "models": {
                    "m": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}
                },
                "routes": {"default": ["m"]},
                "budgets": {"b": {"limit_usd": 1_000_000, "window": "none"}},
                "state": state,
                "auth": {"enabled": False},
            }
        ),
        env={},
    )
    clock = SystemClock()
    store = await open_state(config, clock)
    latencies: list[float] = []
    deadline = time.monotonic() + _MAX_PHASE_S
    total = _CYCLES[concurrency]

    async def worker(cycles: int) -> None:
        for number in range(cycles):
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            holding = await store.reserve(("b",), 1_000, (), ())
            assert holding is not None
            record = SpendRecord(
                f"r{number}", clock.now_s(), ("b",), "", "m", 10, 5, 1_000, 700, "ok"
            )
            await store.commit(holding, 700, 15, record)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    transactions = store.ledger.statistics().transactions if isinstance(store, LocalState) else 0
    await store.aclose()
    latencies.sort()
    return StateResult(
        backend=backend.value,
        concurrency=concurrency,
        cycles=len(latencies),
        per_second=len(latencies) / elapsed,
        p50_us=latencies[len(latencies) // 2] * 1e6,
        p99_us=latencies[int(len(latencies) * 0.99)] * 1e6,
        transactions=transactions,
    )


async def measure() -> list[StateResult]:
    with tempfile.TemporaryDirectory(prefix="faregate-state-") as scratch:
        redis = RedisServer(Path(scratch))
        redis.start()
        try:
            return [
                await _measure(backend, concurrency, Path(scratch), redis.url)
                for backend in StateBackend
                for concurrency in _CYCLES
            ]
        finally:
            redis.stop()


def render(results: list[StateResult]) -> str:
    rows = [("backend", "concurrency", "cycles", "cycles/s", "p50 (µs)", "p99 (µs)", "txns")]
    for r in results:
        rows.append(
            (
                r.backend,
                str(r.concurrency),
                f"{r.cycles:,}",
                f"{r.per_second:,.0f}",
                f"{r.p50_us:,.0f}",
                f"{r.p99_us:,.0f}",
                f"{r.transactions:,}",
            )
        )
    title = (
        "State backends: reserve + commit with its ledger record"
        " (sqlite: fsync'd WAL; redis: loopback, no persistence)"
    )
    return "\n".join([title, *align(rows)])


if __name__ == "__main__":
    print(render(asyncio.run(measure())))
