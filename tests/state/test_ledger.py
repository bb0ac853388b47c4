"""The SQLite ledger: durable before it answers (fsync'd, or with synchronous
normal in the WAL), group commits, and it never silently resets spend when
its file is unusable."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from faregate_server.config.schema import ConfigError
from faregate_server.state.ledger import Ledger, ResultToKeep, SpendRecord, SqliteLedger
from faregate_server.state.ledger_lock import LedgerInUse
from faregate_server.state.opening import open_state
from faregate_server.state.replay import StoredResult
from faregate_server.state.store import LocalState

from tests.conftest import to_config
from tests.fakes.clock import FakeClock


def _record(
    number: int, budget_key: str = "team", time_s: float = 1_000.0, *also: str
) -> SpendRecord:
    return SpendRecord(
        request_id=f"r{number}",
        time_s=time_s,
        budget_keys=(budget_key, *also),
        agent="tester",
        model="m",
        input_tokens=10,
        output_tokens=number,
        reserved_nano_usd=1_000,
        cost_nano_usd=100 + number,
        outcome="succeeded",
    )


async def test_records_survive_a_reopen_and_sum_by_window(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = await SqliteLedger.open(path)
    await ledger.record(_record(1, time_s=500.0))
    await ledger.record(_record(2, time_s=1_500.0))
    await ledger.record(_record(3, budget_key="other", time_s=1_500.0))
    await ledger.aclose()

    reopened = await SqliteLedger.open(path)
    try:
        assert reopened.spent_since({"team": 1_000.0, "other": 0.0, "none": 0.0}) == {
            "team": 102,
            "other": 103,
            "none": 0,
        }
    finally:
        await reopened.aclose()


async def test_a_record_counts_for_every_budget_it_charged(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        await ledger.record(_record(1, "agent", 1_000.0, "team", "org"))
        await ledger.record(_record(2, "team", 1_000.0))

        assert ledger.spent_since({"agent": 0.0, "team": 0.0, "org": 0.0}) == {
            "agent": 101,
            "team": 203,
            "org": 101,
        }
        found = await ledger.query("org", "", 10, None)
        assert [record.budget_keys for _, record in found] == [("agent", "team", "org")]
    finally:
        await ledger.aclose()


async def test_a_ledger_of_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE spend (request_id TEXT NOT NULL, time_s REAL NOT NULL,"
        " budget_key TEXT NOT NULL, agent TEXT NOT NULL, model TEXT NOT NULL,"
        " input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
        " reserved_nano_usd INTEGER NOT NULL, cost_nano_usd INTEGER NOT NULL,"
        " outcome TEXT NOT NULL)"
    )
    old.execute(
        "INSERT INTO spend VALUES ('old', 1.0, 'team', 'a', 'm', 1, 2, 30, 20, 'succeeded')"
    )
    old.commit()
    old.close()

    ledger = await SqliteLedger.open(path)
    try:
        await ledger.record(_record(1))
        assert ledger.spent_since({"team": 0.0}) == {"team": 20 + 101}
        (_, newest), (_, oldest) = await ledger.query("", "", 10, None)
        assert (newest.request_id, oldest.request_id) == ("r1", "old")
        assert (oldest.budget_keys, oldest.attempts) == (("team",), 1)
        assert (oldest.usage_flaw, oldest.reported_usage) == ("", "")
    finally:
        await ledger.aclose()


async def test_a_ledger_of_the_schema_before_cache_counts_opens_and_gains_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE spend (request_id TEXT NOT NULL, time_s REAL NOT NULL,"
        " budget_key TEXT NOT NULL, agent TEXT NOT NULL, model TEXT NOT NULL,"
        " input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
        " reserved_nano_usd INTEGER NOT NULL, cost_nano_usd INTEGER NOT NULL,"
        " outcome TEXT NOT NULL, also_budget_keys TEXT NOT NULL DEFAULT '[]',"
        " route TEXT NOT NULL DEFAULT '', model_version TEXT NOT NULL DEFAULT '',"
        " attempts INTEGER NOT NULL DEFAULT 1, principal TEXT NOT NULL DEFAULT '',"
        " usage_flaw TEXT NOT NULL DEFAULT '', reported_usage TEXT NOT NULL DEFAULT '')"
    )
    old.execute(
        "INSERT INTO spend VALUES ('old', 1.0, 'team', 'a', 'm', 1, 2, 30, 20, 'succeeded',"
        " '[]', 'r', 'v1', 2, 'p', '', '')"
    )
    old.commit()
    old.close()
    counted = dataclasses.replace(
        _record(1),
        input_tokens=32_010,
        cached_input_tokens=30_000,
        cache_write_input_tokens=2_000,
        cache_write_1h_input_tokens=500,
        output_tokens=40,
        reasoning_tokens=30,
    )

    ledger = await SqliteLedger.open(path)
    try:
        await ledger.record(counted)
        (_, newest), (_, oldest) = await ledger.query("", "", 10, None)
        assert newest == counted
        assert (oldest.request_id, oldest.route, oldest.attempts) == ("old", "r", 2)
        assert (
            oldest.cached_input_tokens,
            oldest.cache_write_input_tokens,
            oldest.cache_write_1h_input_tokens,
            oldest.reasoning_tokens,
        ) == (0, 0, 0, 0)
    finally:
        await ledger.aclose()
    reopened = await SqliteLedger.open(path)
    try:
        assert [record for record in reopened.records_since(0.0)][-1] == counted
    finally:
        await reopened.aclose()


async def test_a_flagged_record_keeps_what_the_upstream_reported(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        flagged = dataclasses.replace(
            _record(1), usage_flaw="negative", reported_usage='{"input_tokens":-5}'
        )
        await ledger.record(flagged)
        [(_, kept)] = await ledger.query("", "", 10, None)
        assert kept == flagged
    finally:
        await ledger.aclose()


async def test_a_record_past_64_bits_is_refused_alone(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        poisoned = dataclasses.replace(_record(0), input_tokens=2**64)
        written = await asyncio.gather(
            *(ledger.record(poisoned if n == 5 else _record(n)) for n in range(10)),
            return_exceptions=True,
        )
        assert [n for n, outcome in enumerate(written) if outcome is not None] == [5]
        assert isinstance(written[5], ValueError)
        assert ledger.spent_since({"team": 0.0}) == {
            "team": sum(100 + n for n in range(10) if n != 5)
        }
        await ledger.record(_record(10))  # the writer goes on
        assert ledger.statistics().records == 10
    finally:
        await ledger.aclose()


async def test_a_record_sqlite_cannot_bind_fails_alone_in_its_batch(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        unbindable = dataclasses.replace(_record(0), agent=object())  # type: ignore[arg-type]
        written = await asyncio.gather(
            *(ledger.record(unbindable if n == 5 else _record(n)) for n in range(10)),
            return_exceptions=True,
        )
        assert [n for n, outcome in enumerate(written) if outcome is not None] == [5]
        assert isinstance(written[5], sqlite3.Error)
        assert ledger.spent_since({"team": 0.0}) == {
            "team": sum(100 + n for n in range(10) if n != 5)
        }
    finally:
        await ledger.aclose()


async def test_concurrent_records_share_transactions(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        await asyncio.gather(*(ledger.record(_record(n)) for n in range(200)))

        statistics = ledger.statistics()
        assert statistics.records == 200
        assert statistics.transactions < 20
        assert ledger.spent_since({"team": 0.0}) == {"team": sum(100 + n for n in range(200))}
    finally:
        await ledger.aclose()


async def test_a_record_whose_caller_was_cancelled_is_still_written(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    writing = asyncio.create_task(ledger.record(_record(7)))
    await asyncio.sleep(0)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    await ledger.aclose()

    reopened = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        assert reopened.spent_since({"team": 0.0}) == {"team": 107}
    finally:
        await reopened.aclose()


async def test_a_corrupt_file_is_refused_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database" * 100)

    with pytest.raises(ConfigError, match="cannot use"):
        await SqliteLedger.open(path)
    assert path.read_bytes().startswith(b"this is not a database")


async def test_a_locked_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConfigError, match="locked"):
            await SqliteLedger.open(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_records_handed_in_before_close_are_written_and_later_ones_refused(
    tmp_path: Path,
) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    writes = [asyncio.create_task(ledger.record(_record(n))) for n in range(5)]
    await asyncio.sleep(0)
    await ledger.aclose()
    await asyncio.gather(*writes)
    with pytest.raises(RuntimeError, match="closed"):
        await ledger.record(_record(9))

    reopened = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        assert reopened.spent_since({"team": 0.0}) == {"team": sum(100 + n for n in range(5))}
    finally:
        await reopened.aclose()


async def test_a_second_writer_is_refused_naming_the_file_and_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = await SqliteLedger.open(path)
    try:
        with pytest.raises(LedgerInUse) as refused:
            await SqliteLedger.open(path)
        # Another spelling of the same file meets the same lock.
        with pytest.raises(LedgerInUse):
            await SqliteLedger.open(tmp_path / "." / "ledger.db")
        await ledger.record(_record(1))
    finally:
        await ledger.aclose()
    assert str(path) in str(refused.value)
    assert f"pid {os.getpid()}" in str(refused.value)

    reopened = await SqliteLedger.open(path)  # closing gave the lock up
    await reopened.aclose()


async def test_a_reader_opens_beside_the_writer_and_records_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    writer = await SqliteLedger.open(path)
    try:
        await writer.record(_record(1))
        reader = await SqliteLedger.open(path, writer=False)
        try:
            found = await reader.query("", "", 10, None)
            with pytest.raises(RuntimeError, match="read only"):
                await reader.record(_record(2))
        finally:
            await reader.aclose()
        await writer.record(_record(3))  # the reader took nothing from the writer
    finally:
        await writer.aclose()
    assert [record.request_id for _, record in found] == ["r1"]


async def _synchronous(ledger: Ledger) -> int:
    """PRAGMA synchronous of the ledger's own connection (the setting is per connection)."""
    assert isinstance(ledger, SqliteLedger)
    connection = ledger._connection
    assert connection is not None
    value: int = await ledger._call(lambda: connection.execute("PRAGMA synchronous").fetchone()[0])
    return value


@pytest.mark.parametrize(("synchronous", "pragma"), [("full", 2), ("normal", 1)])
async def test_each_synchronous_mode_sets_its_pragma_and_keeps_records_across_a_reopen(
    tmp_path: Path, synchronous: str, pragma: int
) -> None:
    path = tmp_path / "ledger.db"
    ledger = await SqliteLedger.open(path, synchronous=synchronous)
    try:
        assert await _synchronous(ledger) == pragma
        await asyncio.gather(*(ledger.record(_record(n)) for n in range(20)))
        await ledger.record(_record(20))
    finally:
        await ledger.aclose()

    reopened = await SqliteLedger.open(path, synchronous=synchronous)
    try:
        assert await _synchronous(reopened) == pragma
        assert reopened.spent_since({"team": 0.0}) == {"team": sum(100 + n for n in range(21))}
        assert len(await reopened.query("", "", 100, None)) == 21
    finally:
        await reopened.aclose()


async def test_an_unknown_synchronous_mode_is_refused_before_the_file_is_touched(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SqliteLedger.open(tmp_path / "ledger.db", synchronous="off")
    assert not (tmp_path / "ledger.db").exists()


@pytest.mark.parametrize(("configured", "pragma"), [(None, 2), ("full", 2), ("normal", 1)])
async def test_the_configured_synchronous_mode_reaches_the_ledger(
    tmp_path: Path, configured: str | None, pragma: int
) -> None:
    state: dict[str, Any] = {"backend": "sqlite", "path": str(tmp_path / "ledger.db")}
    if configured is not None:
        state["sqlite_synchronous"] = configured
    config = to_config(
        {
            "models": {"m": {"provider": "sim", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}},
            "routes": {"default": ["m"]},
            "state": state,
            "auth": {"enabled": False},
        }
    )
    opened = await open_state(config, FakeClock())
    try:
        assert isinstance(opened, LocalState)
        assert await _synchronous(opened.ledger) == pragma
    finally:
        await opened.aclose()


async def test_expired_results_are_pruned_by_the_clock_that_dated_the_records(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    stored = StoredResult("fp", "{}", 0)
    ledger = await SqliteLedger.open(path)
    try:
        # The first transaction after an open prunes: dated 1,000 s, it
        # keeps a result that expires at 2,000 s, whatever the wall clock says.
        await ledger.record(_record(1, time_s=1_000.0), ResultToKeep("r1", stored, 2_000.0))
        assert await ledger.result("r1", now_s=1_500.0) == stored
    finally:
        await ledger.aclose()

    reopened = await SqliteLedger.open(path)
    try:
        await reopened.record(_record(2, time_s=3_000.0))  # prunes as of 3,000 s

        assert await reopened.result("r1", now_s=1_500.0) is None
    finally:
        await reopened.aclose()
