"""Config hot reload: on SIGHUP, on a change of the config file, or on request.

A new config is validated whole first; a bad one is refused with a log line
and the old one keeps serving. A good one is applied in one step with no
await in between: a new catalog (reusing every unchanged model's deployment,
so its pool, breaker and latency history carry over), budgets and limit
pools reconfigured in place (a kept key keeps its spend), API keys and grants
replaced (so keys rotate without a restart), then the gateway switched to the
new catalog. Requests in flight finish on the catalog they
started with. Server settings (listen address, message limits) and telemetry settings
need a restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp

from faregate_server.clock import Clock
from faregate_server.config.load import load_config
from faregate_server.config.schema import Config, ConfigError
from faregate_server.routing.gateway import Gateway
from faregate_server.security.auth import Authenticator
from faregate_server.state.store import StateStore
from faregate_server.upstream.catalog import Catalog

logger = logging.getLogger(__name__)


class Reloader:
    def __init__(
        self,
        path: Path | None,
        gateway: Gateway,
        state: StateStore,
        authenticator: Authenticator,
        session: aiohttp.ClientSession,
        clock: Clock,
    ) -> None:
        self._path = path
        self._gateway = gateway
        self._auth = authenticator
        self._state = state
        self._session = session
        self._clock = clock
        self._seen = self._stamp()
        self.reloads = 0
        """Configs applied since start."""

    @property
    def config(self) -> Config:
        return self._gateway.catalog.config

    @property
    def path(self) -> Path | None:
        """The config file; None for the embedded config."""
        return self._path

    def reload(self) -> bool:
        """Reads the config file again; returns whether a new config was applied
        (a refused file is logged)."""
        try:
            return self.reload_or_raise()
        except ConfigError:
            return False

    def reload_or_raise(self) -> bool:
        """As `reload`, but a refused file raises, for a caller who must say why.

        Returns False only on the embedded config (there is no file to read).

        Raises:
            ConfigError: the file is unreadable or invalid (also logged); the
                old config keeps serving.
        """
        if self._path is None:
            logger.warning("config reload asked, but faregate runs on its embedded config")
            return False
        self._seen = self._stamp()
        try:
            config = load_config(self._path)
        except ConfigError as error:
            # One log line however many problems: "; " joins them.
            problems = "; ".join(error.problems)
            logger.error("config reload refused, the old config keeps serving: %s", problems)
            raise
        self.apply(config)
        return True

    def apply(self, config: Config) -> None:
        """Switches to a validated config."""
        if config.server != self.config.server:
            logger.warning("config reload: server settings change only on restart")
        if config.telemetry != self.config.telemetry:
            logger.warning("config reload: telemetry settings change only on restart")
        catalog = Catalog(config, self._session, self._clock, previous=self._gateway.catalog)
        self._state.reconfigure(config)
        self._auth.reconfigure(config.auth)
        self._gateway.catalog = catalog
        self.reloads += 1
        logger.info(
            "config reloaded: %d models, %d routes, %d budgets",
            len(config.models),
            len(config.routes),
            len(config.budgets),
        )

    async def watch(self, poll_s: float) -> None:
        """Reloads whenever the file's modification time or size changes."""
        while True:
            await asyncio.sleep(poll_s)
            stamp = self._stamp()
            if stamp != self._seen:
                try:
                    self.reload()
                except Exception:
                    # A watcher that died would stop reloads silently.
                    logger.exception("config reload failed; the old config keeps serving")

    def _stamp(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            stat = self._path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size
