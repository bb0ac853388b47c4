"""The spend ledger: one durable record per settled request.

`SqliteLedger` keeps the records in an SQLite file in WAL mode. A record is
durable before `record()` returns, so before the response that reports the
spend reaches the caller. Concurrent requests share transactions (group
commit): a single writer drains every record queued meanwhile into one
transaction, on a thread of its own so the event loop never blocks on disk.
At start the ledger is the source of truth: each budget's spend in its
current window is summed from it, so a restart, even after SIGKILL, loses no
committed spend. Reservations are not recorded; a crash voids them.

`MemoryLedger` records nothing durable, for the in-memory state backend.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Protocol

from faregate_server.config import ConfigError, StateBackend, StateConfig

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    request_id TEXT NOT NULL,
    time_s REAL NOT NULL,
    budget_key TEXT NOT NULL,
    agent TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    reserved_nano_usd INTEGER NOT NULL,
    cost_nano_usd INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_by_budget_time ON spend (budget_key, time_s);
"""
_WRITE_ATTEMPTS = 3
_WRITE_RETRY_S = 0.05
_INSERT = "INSERT INTO spend VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SUM_SINCE = (
    "SELECT COALESCE(SUM(cost_nano_usd), 0) FROM spend WHERE budget_key = ? AND time_s >= ?"
)


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """What one settled request spent; the columns of the ledger, in order."""

    request_id: str
    time_s: float
    budget_key: str
    agent: str
    model: str
    input_tokens: int
    output_tokens: int
    reserved_nano_usd: int
    cost_nano_usd: int
    outcome: str
    """"succeeded", or "interrupted" for a partial charge."""


@dataclass(frozen=True, slots=True)
class LedgerStatistics:
    records: int
    transactions: int


class Ledger(Protocol):
    async def record(self, record: SpendRecord) -> None:
        """Returns once the record is durable."""
        ...

    async def query(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        """Records newest first, each with its position; `before` pages on from one.

        Empty `budget_key` or `agent` match every record.
        """
        ...

    def spent_since(self, since_s: Mapping[str, float]) -> dict[str, int]:
        """Each budget's recorded spend since its window started (budget key -> since)."""
        ...

    def statistics(self) -> LedgerStatistics: ...

    async def aclose(self) -> None: ...


class MemoryLedger:
    """Keeps the latest records in memory: spend lives and dies with the process."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._records = 0
        self._recent: deque[tuple[int, SpendRecord]] = deque(maxlen=capacity)

    async def record(self, record: SpendRecord) -> None:
        self._records += 1
        self._recent.append((self._records, record))

    async def query(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        found = []
        for position, record in reversed(self._recent):
            if before is not None and position >= before:
                continue
            if (budget_key and record.budget_key != budget_key) or (
                agent and record.agent != agent
            ):
                continue
            found.append((position, record))
            if len(found) == limit:
                break
        return found

    def spent_since(self, since_s: Mapping[str, float]) -> dict[str, int]:
        return {}

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(records=self._records, transactions=0)

    async def aclose(self) -> None:
        return None


class SqliteLedger:
    """The ledger in an SQLite file (WAL), written by group commit."""

    def __init__(self, path: Path) -> None:
        # One thread owns the connection: sqlite3 objects stay on their thread.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faregate-ledger")
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[SpendRecord, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._records = 0
        self._transactions = 0
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteLedger:
        """Opens (or creates) the ledger file.

        Raises:
            ConfigError: the file is not a usable SQLite database (corrupt,
                locked, unreadable); its spend is never silently reset.
        """
        ledger = cls(path)
        try:
            await ledger._run(ledger._connect)
        except sqlite3.Error as error:
            ledger._thread.shutdown(wait=False)
            raise ConfigError(f"state.path: cannot use {path} as the ledger: {error}") from None
        return ledger

    def _connect(self) -> None:
        connection = sqlite3.connect(self._path, isolation_level=None, timeout=1.0)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transaction survives a power cut, not only a crash.
            connection.execute("PRAGMA synchronous=FULL")
            (verdict,) = connection.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {verdict}")
            connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    async def record(self, record: SpendRecord) -> None:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        done = asyncio.get_running_loop().create_future()
        self._pending.append((record, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="faregate-ledger")
        # Shielded: a caller that goes away must not take its record with it.
        await asyncio.shield(done)

    async def _write_pending(self) -> None:
        batch: list[tuple[SpendRecord, asyncio.Future[None]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._write_batch(batch)
                batch = []
        finally:
            # Only if this task itself was cancelled: nobody may wait forever.
            for _, done in (*batch, *self._pending):
                if not done.done():
                    done.set_exception(RuntimeError("the ledger writer stopped"))
                    done.exception()  # retrieved: its caller may be gone

    async def _write_batch(self, batch: list[tuple[SpendRecord, asyncio.Future[None]]]) -> None:
        rows = [astuple(record) for record, _ in batch]
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                await self._run(self._insert, rows)
                break
            except sqlite3.Error as error:
                if attempt < _WRITE_ATTEMPTS:
                    await asyncio.sleep(_WRITE_RETRY_S * attempt)
                    continue
                # The spend stands in memory but not on disk: say exactly what
                # is missing so an operator can repair the ledger.
                for row in rows:
                    logger.error("spend record not written to the ledger: %r", row)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                        done.exception()
                return
        self._records += len(batch)
        self._transactions += 1
        for _, done in batch:
            if not done.done():
                done.set_result(None)

    def _insert(self, rows: Iterable[tuple[object, ...]]) -> None:
        assert self._connection is not None
        with self._connection:  # one transaction: BEGIN ... COMMIT
            self._connection.execute("BEGIN")
            self._connection.executemany(_INSERT, rows)

    async def query(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(
            self._thread, self._select, budget_key, agent, limit, before
        )
        return [(row[0], SpendRecord(*row[1:])) for row in rows]

    def _select(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[Any, ...]]:
        assert self._connection is not None
        query = (
            "SELECT rowid, * FROM spend WHERE rowid < ? AND (? = '' OR budget_key = ?)"
            " AND (? = '' OR agent = ?) ORDER BY rowid DESC LIMIT ?"
        )
        before_row = before if before is not None else 2**63 - 1
        arguments = (before_row, budget_key, budget_key, agent, agent, limit)
        return self._connection.execute(query, arguments).fetchall()

    def spent_since(self, since_s: Mapping[str, float]) -> dict[str, int]:
        """Read once at start, before serving, so it may block."""
        return self._thread.submit(self._sum_since, dict(since_s)).result()

    def _sum_since(self, since_s: dict[str, float]) -> dict[str, int]:
        assert self._connection is not None
        spent = {}
        for key, since in since_s.items():
            (total,) = self._connection.execute(_SUM_SINCE, (key, since)).fetchone()
            spent[key] = int(total)
        return spent

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(records=self._records, transactions=self._transactions)

    async def aclose(self) -> None:
        """Writes every record already handed in, then closes; later records are refused."""
        self._closed = True
        while self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer})
        if self._connection is not None:
            await self._run(self._connection.close)
            self._connection = None
        await asyncio.to_thread(self._thread.shutdown)

    async def _run(self, function: Callable[..., None], *args: object) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)


async def open_ledger(state: StateConfig) -> Ledger:
    """The ledger of the configured state backend."""
    if state.backend is StateBackend.SQLITE:
        return await SqliteLedger.open(Path(state.path))
    return MemoryLedger()
