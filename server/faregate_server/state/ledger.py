"""The spend ledger: one durable record per settled request.

`SqliteLedger` keeps the records in an SQLite file in WAL mode. A record is
durable before `record()` returns, so before the response that reports the
spend reaches the caller: fsync'd (synchronous FULL, the default), or with
`synchronous="normal"` written to the WAL, which survives a crash of the
process but maybe not a power cut or an OS crash. The ledger has a thread of
its own, so the event loop never blocks on disk: the thread alone holds the
SQLite connection and takes its jobs (records, queries) from one queue in
the order they were handed in. Concurrent requests share transactions
(group commit): the thread takes a record and every record queued behind it
into one transaction, and wakes the loop once to tell all their callers;
while requests commit concurrently on a busy loop, a batch first waits a
few milliseconds for company.

At start the ledger is the source of truth: each budget's spend in its
current window is summed from it, so a restart, even after SIGKILL, loses no
committed spend. Reservations are not recorded; a crash voids them. The
result of a request that carried a client `request_id` is written in the same
transaction as its spend record, so a retry finds it if and only if the spend
is on disk. One bad record never takes its batch down: a record SQLite
could not store (an integer past 64 bits, say) is refused before it joins a
batch, and a batch that fails anyway is written again record by record, so
only the records that fail themselves fail. One process writes a ledger
file: opening it to write takes an OS lock (ledger_lock.py) that a second
writer is refused by.

`MemoryLedger` records nothing durable, for the in-memory state backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from faregate_server.config.schema import ConfigError
from faregate_server.state.ledger_lock import WriterLock
from faregate_server.state.replay import StoredResult

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
CREATE TABLE IF NOT EXISTS results (
    request_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    budget_remaining_nano_usd INTEGER NOT NULL,
    expires_s REAL NOT NULL
);
"""
# Columns added since the first schema: added in place to an older file.
_LATER_COLUMNS = {
    "also_budget_keys": "TEXT NOT NULL DEFAULT '[]'",
    "route": "TEXT NOT NULL DEFAULT ''",
    "model_version": "TEXT NOT NULL DEFAULT ''",
    "attempts": "INTEGER NOT NULL DEFAULT 1",
    "principal": "TEXT NOT NULL DEFAULT ''",
    "usage_flaw": "TEXT NOT NULL DEFAULT ''",
    "reported_usage": "TEXT NOT NULL DEFAULT ''",
    "cached_input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_write_input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_write_1h_input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
}
_COLUMNS = (
    "request_id, time_s, budget_key, agent, model, input_tokens, output_tokens,"
    " reserved_nano_usd, cost_nano_usd, outcome, also_budget_keys, route, model_version, attempts,"
    " principal, usage_flaw, reported_usage, cached_input_tokens, cache_write_input_tokens,"
    " cache_write_1h_input_tokens, reasoning_tokens"
)
_INT64 = range(-(2**63), 2**63)
_WRITE_ATTEMPTS = 3
_WRITE_RETRY_S = 0.05
_ROWS_PER_INSERT = 32
"""Rows of one INSERT statement (21 parameters each: well within SQLite's
oldest limit of 999); a larger batch takes several in one transaction."""
_INSERT_RESULT = "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)"
_SUM_SINCE = (
    "SELECT COALESCE(SUM(cost_nano_usd), 0) FROM spend WHERE time_s >= ? AND (budget_key = ?"
    " OR EXISTS (SELECT 1 FROM json_each(also_budget_keys) WHERE json_each.value = ?))"
)


@functools.cache
def _insert_rows(count: int) -> str:
    """INSERT of `count` spend rows (sqlite3 keeps each count's statement prepared)."""
    row = f"({', '.join('?' * (_COLUMNS.count(',') + 1))})"
    return f"INSERT INTO spend ({_COLUMNS}) VALUES {', '.join([row] * count)}"


_GROUP_WAIT_S = 0.008
"""How long a batch waits for company while requests commit concurrently
on a busy loop (SqliteLedger._wait_for_company)."""
_BUSY_WINDOW_S = 0.02
"""The loop's busyness is measured over stretches of at least this long."""
_BUSY_ENOUGH = 0.5
"""A loop whose thread was on the CPU this share of the time is busy."""
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
"""`state.sqlite_synchronous` -> the PRAGMA synchronous it sets."""
# Expired results are dropped once every this many transactions.
_PRUNE_EVERY = 1000
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SpendRecord:
    """What one settled request spent: one row of the ledger."""

    request_id: str
    time_s: float
    budget_keys: tuple[str, ...]
    """Every budget charged, the request's own first."""
    agent: str
    model: str
    input_tokens: int
    output_tokens: int
    reserved_nano_usd: int
    cost_nano_usd: int
    outcome: str
    """"succeeded", or "interrupted" for a partial charge."""
    route: str = ""
    model_version: str = ""
    attempts: int = 1
    """Upstream attempts made, hedges and retries included."""
    principal: str = ""
    """Who the request was authenticated as; empty with auth off."""
    usage_flaw: str = ""
    """Why the upstream's reported usage was not believed (a `UsageFlaw`),
    so the request was charged its reservation; empty when it was."""
    reported_usage: str = ""
    """With a usage flaw: the counts the upstream reported, as JSON."""
    cached_input_tokens: int = 0
    """The part of `input_tokens` read from the provider's prompt cache."""
    cache_write_input_tokens: int = 0
    """The part of `input_tokens` written to the provider's prompt cache."""
    cache_write_1h_input_tokens: int = 0
    """The part of `cache_write_input_tokens` written to live an hour."""
    reasoning_tokens: int = 0
    """The part of `output_tokens` the model spent reasoning."""

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object (one line of an export)."""
        fields = asdict(self)
        fields["budget_keys"] = list(self.budget_keys)
        return fields


_ROW_TIME_S = 1
"""Where `_row` puts a record's time_s."""


def _row(record: SpendRecord) -> tuple[object, ...]:
    return (
        record.request_id,
        record.time_s,
        record.budget_keys[0],
        record.agent,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.reserved_nano_usd,
        record.cost_nano_usd,
        record.outcome,
        json.dumps(record.budget_keys[1:]) if len(record.budget_keys) > 1 else "[]",
        record.route,
        record.model_version,
        record.attempts,
        record.principal,
        record.usage_flaw,
        record.reported_usage,
        record.cached_input_tokens,
        record.cache_write_input_tokens,
        record.cache_write_1h_input_tokens,
        record.reasoning_tokens,
    )


def _from_row(row: Sequence[Any]) -> SpendRecord:
    (request_id, time_s, key, agent, model, tokens_in, tokens_out, reserved, cost, outcome) = row[
        :10
    ]
    also, route, version, attempts, principal, flaw, reported = row[10:17]
    cached, written, written_1h, reasoning = row[17:]
    return SpendRecord(
        request_id,
        time_s,
        (key, *json.loads(also)),
        agent,
        model,
        tokens_in,
        tokens_out,
        reserved,
        cost,
        outcome,
        route,
        version,
        attempts,
        principal,
        flaw,
        reported,
        cached,
        written,
        written_1h,
        reasoning,
    )


def _check_storable(row: tuple[object, ...]) -> None:
    """Raises ValueError for a row SQLite cannot store, before it joins a batch."""
    for value in row:
        if isinstance(value, int) and value not in _INT64:
            raise ValueError(f"spend record not storable: {value} exceeds 64 bits")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"spend record not storable: {value}")


@dataclass(frozen=True, slots=True)
class ResultToKeep:
    """A request's result, kept with its spend record until `expires_s`."""

    request_id: str
    stored: StoredResult
    expires_s: float


@dataclass(frozen=True, slots=True)
class LedgerStatistics:
    records: int
    transactions: int


class Ledger(Protocol):
    async def record(self, record: SpendRecord, result: ResultToKeep | None = None) -> None:
        """Returns once the record (and the result, if any) is durable."""
        ...

    async def query(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        """Records newest first, each with its position; `before` pages on from one.

        Empty `budget_key` or `agent` match every record.
        """
        ...

    async def result(self, request_id: str, now_s: float) -> StoredResult | None:
        """The kept result of a request, unless it has expired."""
        ...

    def spent_since(self, since_s: Mapping[str, float]) -> dict[str, int]:
        """Each budget's recorded spend since its window started (budget key -> since)."""
        ...

    def records_since(self, since_s: float) -> list[SpendRecord]:
        """Every record from since_s on (read at start, so it may block)."""
        ...

    def statistics(self) -> LedgerStatistics: ...

    async def aclose(self) -> None: ...


def matches(record: SpendRecord, budget_key: str, agent: str) -> bool:
    """Whether a record passes a query's filters (empty ones match all)."""
    return (not budget_key or budget_key in record.budget_keys) and (
        not agent or record.agent == agent
    )


class MemoryLedger:
    """Keeps the latest records in memory: spend lives and dies with the process."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._records = 0
        self._recent: deque[tuple[int, SpendRecord]] = deque(maxlen=capacity)
        self._results: dict[str, ResultToKeep] = {}

    async def record(self, record: SpendRecord, result: ResultToKeep | None = None) -> None:
        self._records += 1
        self._recent.append((self._records, record))
        if result is not None:
            self._results[result.request_id] = result
            if len(self._results) > self._recent.maxlen:  # type: ignore[operator]
                self._prune(record.time_s)

    async def query(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        found = []
        for position, record in reversed(self._recent):
            if before is not None and position >= before:
                continue
            if not matches(record, budget_key, agent):
                continue
            found.append((position, record))
            if len(found) == limit:
                break
        return found

    async def result(self, request_id: str, now_s: float) -> StoredResult | None:
        kept = self._results.get(request_id)
        if kept is None or kept.expires_s <= now_s:
            return None
        return kept.stored

    def _prune(self, now_s: float) -> None:
        self._results = {k: v for k, v in self._results.items() if v.expires_s > now_s}
        while len(self._results) > self._recent.maxlen:  # type: ignore[operator]
            del self._results[next(iter(self._results))]

    def spent_since(self, since_s: Mapping[str, float]) -> dict[str, int]:
        return {}

    def records_since(self, since_s: float) -> list[SpendRecord]:
        return []

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(records=self._records, transactions=0)

    async def aclose(self) -> None:
        return None


class _Call:
    """A job for the ledger's thread: a function, and the future its outcome goes to."""

    __slots__ = ("args", "function", "future")

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[object, ...],
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
    ) -> None:
        self.function = function
        self.args = args
        self.future = future
        """An asyncio future, or a thread's for a caller that blocks."""

    def run(self) -> None:
        try:
            value = self.function(*self.args)
        except Exception as error:
            self._deliver(None, error)
        else:
            self._deliver(value, None)

    def _deliver(self, value: object, error: Exception | None) -> None:
        future = self.future
        if isinstance(future, concurrent.futures.Future):
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            future.get_loop().call_soon_threadsafe(_resolve, (future,), value, error)


def _resolve(
    futures: Sequence[asyncio.Future[Any]], value: object, error: Exception | None
) -> None:
    """On the loop: tells each caller the outcome of its job (a batch's callers at once)."""
    for future in futures:
        if future.done():  # its caller was cancelled (a record is written all the same)
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


_Record = tuple[tuple[object, ...], "tuple[object, ...] | None", "asyncio.Future[None]", float]
"""A spend row and its result row (if any) handed to the thread, with the
future its caller awaits and when it was handed in (time.monotonic())."""
_STOP = object()
"""Handed to the thread last: write what came before, close, end."""


class SqliteLedger:
    """The ledger in an SQLite file (WAL), written by group commit."""

    def __init__(
        self, path: Path, lock: WriterLock | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._path = path
        self._lock = lock
        self._loop = loop
        # Only the ledger's thread touches the connection (sqlite3 objects
        # stay on their thread), and it runs the jobs in the order handed in.
        self._connection: sqlite3.Connection | None = None
        self._inbox: queue.SimpleQueue[_Record | _Call | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="faregate-ledger", daemon=True)
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._records = 0
        self._transactions = 0
        self._last_batch = 0
        """Records in the last transaction (read and written by the thread)."""
        # How busy the loop's thread is, measured at records (see _note_busy).
        self._busy_since_s = time.monotonic()
        self._busy_cpu_s = time.thread_time()
        self._loop_busy = 0.0
        """Share of the last measured stretch the loop's thread spent on the CPU."""
        self._closed = False
        self._stopping = False

    @classmethod
    async def open(
        cls, path: Path, *, writer: bool = True, synchronous: str = "full"
    ) -> SqliteLedger:
        """Opens (or creates) the ledger file.

        Args:
            path: The SQLite file.
            writer: Take the ledger's writer lock (ledger_lock.py) until
                `aclose()`; False for a reader beside a serving process
                (an export), which must not record.
            synchronous: "full" (each commit is fsync'd: it survives a
                power cut) or "normal" (WAL with synchronous=NORMAL: a
                commit survives a crash of this process, but the last ones
                may be lost to a power cut or an OS crash).

        Raises:
            LedgerInUse: another process writes this ledger.
            ConfigError: the file is not a usable SQLite database (corrupt,
                locked, unreadable); its spend is never silently reset.
        """
        pragma = _SYNCHRONOUS.get(synchronous)
        if pragma is None:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}: {synchronous!r}")
        lock = WriterLock(path) if writer else None
        if lock is not None:
            lock.acquire()
        ledger = cls(path, lock, asyncio.get_running_loop())
        ledger._thread.start()
        try:
            await ledger._call(ledger._connect, pragma)
        except BaseException as error:
            ledger._stop()
            if lock is not None:
                lock.release()
            if isinstance(error, sqlite3.Error):
                message = f"state.path: cannot use {path} as the ledger: {error}"
                raise ConfigError(message) from None
            raise
        return ledger

    def _connect(self, synchronous: str) -> None:
        connection = sqlite3.connect(
            self._path,
            isolation_level=None,
            timeout=1.0,
            # Room for an INSERT of every batch size besides the other statements.
            cached_statements=_ROWS_PER_INSERT + 32,
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transaction survives a power cut, not only a
            # crash; NORMAL (in WAL mode) only a crash of this process.
            connection.execute(f"PRAGMA synchronous={synchronous}")
            (verdict,) = connection.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {verdict}")
            connection.executescript(_SCHEMA)
            present = {row[1] for row in connection.execute("PRAGMA table_info(spend)")}
            for column, definition in _LATER_COLUMNS.items():
                if column not in present:
                    connection.execute(f"ALTER TABLE spend ADD COLUMN {column} {definition}")
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    async def record(self, record: SpendRecord, result: ResultToKeep | None = None) -> None:
        if self._closed:
            raise RuntimeError("the ledger is closed")
        if self._lock is None:
            raise RuntimeError("the ledger was opened to read only")
        row = _row(record)
        _check_storable(row)
        kept = None
        if result is not None:
            stored = result.stored
            kept = (
                result.request_id,
                stored.fingerprint,
                stored.result,
                stored.budget_remaining_nano_usd,
                result.expires_s,
            )
        done = self._loop.create_future()
        # Once handed in, the record is the thread's: a caller cancelled
        # meanwhile stops waiting (its future is cancelled), and the record
        # is written all the same.
        now_s = time.monotonic()
        if now_s - self._busy_since_s >= _BUSY_WINDOW_S:
            self._note_busy(now_s)
        self._inbox.put((row, kept, done, now_s))
        await done

    def _note_busy(self, now_s: float) -> None:
        # On the loop's thread: its CPU time over the stretch since the last note.
        cpu_s = time.thread_time()
        self._loop_busy = (cpu_s - self._busy_cpu_s) / (now_s - self._busy_since_s)
        self._busy_since_s, self._busy_cpu_s = now_s, cpu_s

    def _serve(self) -> None:
        """The ledger's thread: runs every job in the order handed in, until _STOP."""
        held: object = None
        while True:
            job = held if held is not None else self._inbox.get()
            held = None
            if job is _STOP:
                break
            if isinstance(job, _Call):
                job.run()
                continue
            # Group commit: the record and every record queued behind it
            # meanwhile share one transaction.
            batch: list[_Record] = [job]  # type: ignore[list-item]
            if self._last_batch > 1 and self._loop_busy >= _BUSY_ENOUGH:
                self._wait_for_company(batch[0])
            held = self._gather(batch)
            self._last_batch = len(batch)
            try:
                self._write(batch)
            except Exception as error:  # a bug: say so, and let nobody wait forever
                logger.exception("the ledger could not write a batch")
                self._settle(batch, error)
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(_resolve, (self._stopped,), None, None)

    @staticmethod
    def _wait_for_company(first: _Record) -> None:
        """Holds a batch until `_GROUP_WAIT_S` after its first record was handed in.

        Only when the last batch had company, so requests are committing
        concurrently (as PostgreSQL's commit_delay waits only with
        commit_siblings), and the loop is busy, so more of them are on their
        way and the core has no time to spare. Then the wait is cheap: those
        requests use the core meanwhile, and the commit it leads to, whose
        fsync is most of a transaction's cost, is shared by several. A
        request that commits alone never waits, nor one on a loop with time
        to spare (callers that all wait on the ledger together, say).
        """
        wait_s = first[3] + _GROUP_WAIT_S - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)  # lets go of the GIL: the loop runs on

    def _gather(self, batch: list[_Record]) -> object:
        """Takes every record queued now into the batch; returns the job after them, if any."""
        inbox = self._inbox
        while not inbox.empty():  # only this thread takes from the inbox
            job = inbox.get_nowait()
            if not isinstance(job, tuple):
                return job
            batch.append(job)
        return None

    def _write(self, batch: list[_Record]) -> None:
        rows = [record[0] for record in batch]
        results = [record[1] for record in batch if record[1] is not None]
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                self._insert(rows, results)
                break
            except sqlite3.OperationalError as error:
                # Locked, busy, out of space: the file's trouble, for the whole batch.
                if attempt < _WRITE_ATTEMPTS:
                    time.sleep(_WRITE_RETRY_S * attempt)  # on the ledger's thread
                    continue
                self._fail(batch, rows, error)
                return
            except (sqlite3.Error, ValueError, TypeError, OverflowError) as error:
                # A record's trouble: it fails alone, and the others are
                # written in transactions of their own.
                if len(batch) > 1:
                    for pending in batch:
                        self._write([pending])
                    return
                self._fail(batch, rows, error)
                return
        self._records += len(batch)
        self._transactions += 1
        self._settle(batch, None)

    def _fail(self, batch: list[_Record], rows: list[tuple[object, ...]], error: Exception) -> None:
        # The spend stands in memory but not on disk: say exactly what is
        # missing so an operator can repair the ledger.
        for row in rows:
            logger.error("spend record not written to the ledger: %r", row)
        self._settle(batch, error)

    def _settle(self, batch: list[_Record], error: Exception | None) -> None:
        # One wake-up of the loop per batch, however many callers it tells.
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(_resolve, [record[2] for record in batch], None, error)

    def _insert(self, rows: list[tuple[object, ...]], results: list[tuple[object, ...]]) -> None:
        connection = self._connection
        assert connection is not None
        prune = self._transactions % _PRUNE_EVERY == 0
        if len(rows) <= _ROWS_PER_INSERT and not results and not prune:
            # One statement in autocommit is a transaction of its own, as
            # durable as BEGIN ... COMMIT, and it inserts every row in one
            # step: sqlite3 lets go of the GIL once per step, and on a busy
            # core each time costs a switch between this thread and the loop's.
            connection.execute(_insert_rows(len(rows)), list(chain.from_iterable(rows)))
            return
        with connection:  # one transaction: BEGIN ... COMMIT
            connection.execute("BEGIN")
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                connection.execute(_insert_rows(len(chunk)), list(chain.from_iterable(chunk)))
            if results:
                connection.executemany(_INSERT_RESULT, results)
            if prune:
                # Expired by the clock that dated the records (the server's
                # `Clock.now_s`), as the memory ledger prunes: the newest here.
                newest_s = max(cast(float, row[_ROW_TIME_S]) for row in rows)
                connection.execute("DELETE FROM results WHERE expires_s < ?", (newest_s,))

    async def query(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[int, SpendRecord]]:
        rows = await self._call(self._select, budget_key, agent, limit, before)
        return [(row[0], _from_row(row[1:])) for row in rows]

    def _select(
        self, budget_key: str, agent: str, limit: int, before: int | None
    ) -> list[tuple[Any, ...]]:
        assert self._connection is not None
        query = (
            f"SELECT rowid, {_COLUMNS} FROM spend WHERE rowid < ? AND (? = '' OR budget_key = ?"
            " OR EXISTS (SELECT 1 FROM json_each(also_budget_keys) WHERE json_each.value = ?))"
            " AND (? = '' OR agent = ?) ORDER BY rowid DESC LIMIT ?"
        )
        before_row = before if before is not None else 2**63 - 1
        arguments = (before_row, budget_key, budget_key, budget_key, agent, agent, limit)
        return self._connection.execute(query, arguments).fetchall()

    async def result(self, request_id: str, now_s: float) -> StoredResult | None:
        row = await self._call(self._select_result, request_id, now_s)
        return None if row is None else StoredResult(*row)

    def _select_result(self, request_id: str, now_s: float) -> tuple[Any, ...] | None:
        assert self._connection is not None
        query = (
            "SELECT fingerprint, result, budget_remaining_nano_usd FROM results"
            " WHERE request_id = ? AND expires_s > ?"
        )
        row: tuple[Any, ...] | None = self._connection.execute(
            query, (request_id, now_s)
        ).fetchone()
        return row

    def spent_since(self, since_s: Mapping[str, float]) -> dict[str, int]:
        """Read once at start, before serving, so it may block."""
        return self._call_blocking(self._sum_since, dict(since_s))

    def _sum_since(self, since_s: dict[str, float]) -> dict[str, int]:
        assert self._connection is not None
        spent = {}
        for key, since in since_s.items():
            (total,) = self._connection.execute(_SUM_SINCE, (since, key, key)).fetchone()
            spent[key] = int(total)
        return spent

    def records_since(self, since_s: float) -> list[SpendRecord]:
        """Read once at start, before serving, so it may block."""
        return self._call_blocking(self._select_since, since_s)

    def _select_since(self, since_s: float) -> list[SpendRecord]:
        assert self._connection is not None
        if math.isinf(since_s):
            return []
        query = f"SELECT {_COLUMNS} FROM spend WHERE time_s >= ?"
        return [_from_row(row) for row in self._connection.execute(query, (since_s,))]

    def statistics(self) -> LedgerStatistics:
        return LedgerStatistics(records=self._records, transactions=self._transactions)

    async def aclose(self) -> None:
        """Writes every record already handed in, then closes; later records are refused."""
        self._closed = True
        self._stop()
        await asyncio.shield(self._stopped)
        if self._lock is not None:
            self._lock.release()  # last: nothing of ours writes the file any more
            self._lock = None

    def _stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._inbox.put(_STOP)

    async def _call(self, function: Callable[..., _T], *args: object) -> _T:
        future: asyncio.Future[_T] = self._loop.create_future()
        self._inbox.put(_Call(function, args, future))
        return await future

    def _call_blocking(self, function: Callable[..., _T], *args: object) -> _T:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._inbox.put(_Call(function, args, future))
        return future.result()
