"""Opening the configured state backend: the one place that chooses between them."""

from __future__ import annotations

from pathlib import Path

from faregate_server.clock import Clock
from faregate_server.config.schema import Config, StateBackend
from faregate_server.state.alerts import AlertSink
from faregate_server.state.ledger import Ledger, MemoryLedger, SqliteLedger
from faregate_server.state.store import LocalState, StateStore


async def open_state(
    config: Config, clock: Clock, *, writer: bool = True, alerts: AlertSink | None = None
) -> StateStore:
    """The configured state backend, opened.

    Args:
        config: The validated config.
        clock: Time for windows.
        writer: Whether this process will spend (serve); False opens an
            SQLite ledger to read only, beside the process that writes it.
        alerts: Where the budget alerts that commits raise go; None: nowhere.

    Raises:
        ConfigError: the backend's store cannot be used (a corrupt or locked
            SQLite file, one another process writes, an unreachable Redis at
            start in fail-closed mode).
    """
    state = config.state
    if state.backend is StateBackend.REDIS:
        # Imported only when configured: the redis client costs memory nobody else pays.
        from faregate_server.state.redis_store import RedisState

        return await RedisState.open(config, clock, alerts)
    ledger: Ledger
    if state.backend is StateBackend.SQLITE:
        ledger = await SqliteLedger.open(
            Path(state.path), writer=writer, synchronous=state.sqlite_synchronous
        )
    else:
        ledger = MemoryLedger()
    return LocalState(config, clock, ledger, alerts)
