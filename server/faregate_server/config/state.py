"""The `state` section: where budgets, limit pools, the ledger and request ids live."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from faregate_server.config.fields import SECTION, Choice, Integer, Number, Text, Usd


class StateBackend(StrEnum):
    MEMORY = "memory"
    """Nothing survives a restart; for tests and demos."""
    SQLITE = "sqlite"
    """Committed spend is durable in an SQLite file before it is reported; one
    process per file."""
    REDIS = "redis"
    """Budgets, limit pools, the ledger and request ids shared by every replica
    through one Redis."""


class SqliteSynchronous(StrEnum):
    """How hard the sqlite backend waits for a commit to reach the disk (SQLite's
    `PRAGMA synchronous`)."""

    FULL = "full"
    """A reported commit survives a faregate crash, an OS crash and a power failure."""
    NORMAL = "normal"
    """Commits survive a faregate crash but the last ones may be lost on a power
    failure or OS crash; faster."""


class WhenUnavailable(StrEnum):
    """What a replica does while its shared store is unreachable."""

    FAIL_CLOSED = "fail_closed"
    """Refuse requests with UNAVAILABLE: never a nano-dollar unaccounted."""
    FAIL_OPEN = "fail_open"
    """Serve on, each replica spending at most `emergency_cap_usd` per budget,
    and write that spend to the store once it returns."""


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """The shared store of the redis backend."""

    __pydantic_config__ = SECTION

    url: Annotated[str, Text(starts=("redis://", "rediss://", "unix://"))] = (
        "redis://127.0.0.1:6379/0"
    )
    """Where the shared store is (redis:// or rediss:// for TLS, unix:// for a socket)."""
    namespace: Annotated[str, Text()] = "faregate"
    """Prefix of every key; also their cluster hash tag, so the keys of one
    request share a slot."""
    lease_s: Annotated[float, Number(1.0)] = 30.0
    """How long a reservation outlives its replica: a crashed replica's
    reservations return to their budgets this long after its last renewal."""
    timeout_s: Annotated[float, Number()] = 0.5
    """How long one call to Redis may take before the store counts as unreachable."""
    when_unavailable: Annotated[WhenUnavailable, Choice()] = WhenUnavailable.FAIL_CLOSED
    """fail_closed: refuse requests while Redis is away; fail_open: serve on within
    emergency_cap_usd per budget."""
    emergency_cap_nano_usd: Annotated[int, Usd(), Field(validation_alias="emergency_cap_usd")] = 0
    """For fail_open: what this replica may spend per budget while Redis is away
    (written `emergency_cap_usd`, in USD)."""
    ledger_max_records: Annotated[int, Integer(1)] = 1_000_000
    """The ledger stream keeps about this many newest records (export to keep more)."""


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where state lives."""

    __pydantic_config__ = SECTION

    backend: Annotated[StateBackend, Choice()] = StateBackend.SQLITE
    """memory: nothing survives a restart; sqlite: committed spend is durable in
    one file (one process per file); redis: shared by every replica."""
    path: Annotated[str, Text()] = "faregate.db"
    """The SQLite file, for the sqlite backend."""
    request_id_window_s: Annotated[float, Number()] = 86_400.0
    """How long the result of a request with a client request_id is kept for its retries."""
    redis: RedisConfig = RedisConfig()
    """The shared store, for the redis backend."""
    sqlite_synchronous: Annotated[SqliteSynchronous, Choice()] = SqliteSynchronous.FULL
    """For the sqlite backend. full: a reported commit survives a faregate crash,
    an OS crash and a power failure. normal: commits survive a faregate crash but
    the last ones may be lost on a power failure or OS crash; faster."""
