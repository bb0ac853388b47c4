"""Reserve + commit (+ ledger record) per state backend, in process (not a test).

Each backend serves a closed loop of settle cycles: reserve a worst case,
commit a cost, record the spend. At concurrency 1 a cycle pays a whole
durable commit; at 64 concurrent cycles the SQLite ledger's group commit
shares each transaction. Run alone: `python -m tests.bench.state`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from faregate_server.budgets import MemoryBudgetStore
from faregate_server.clock import SystemClock
from faregate_server.config import BudgetConfig, StateBackend, StateConfig, Window
from faregate_server.ledger import SpendRecord, open_ledger

from tests.bench.report import align

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


async def _measure(backend: StateBackend, concurrency: int, scratch: Path) -> StateResult:
    clock = SystemClock()
    budgets = MemoryBudgetStore([BudgetConfig("b", 10**18, Window.NONE)], clock)
    ledger = await open_ledger(StateConfig(backend, str(scratch / f"{backend}-{concurrency}.db")))
    latencies: list[float] = []
    deadline = time.monotonic() + _MAX_PHASE_S
    total = _CYCLES[concurrency]

    async def worker(cycles: int) -> None:
        for number in range(cycles):
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            reservation = await budgets.reserve("b", 1_000)
            await budgets.commit(reservation, 700)
            await ledger.record(
                SpendRecord(f"r{number}", clock.now_s(), "b", "", "m", 10, 5, 1_000, 700, "ok")
            )
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    transactions = ledger.statistics().transactions
    await ledger.aclose()
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
        return [
            await _measure(backend, concurrency, Path(scratch))
            for backend in StateBackend
            for concurrency in _CYCLES
        ]


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
    title = "State backends: reserve + commit + ledger record, in process (durable: fsync'd WAL)"
    return "\n".join([title, *align(rows)])


if __name__ == "__main__":
    print(render(asyncio.run(measure())))
