"""The plain-HTTP admin port: Prometheus `/metrics`, `/healthz` and `/readyz`.

- /metrics: the metrics in Prometheus text format, collected at scrape
  time from a registry of this server's own, rendered by prometheus_client:
  the OpenTelemetry instruments (through opentelemetry-exporter-prometheus's
  reader) and faregate's latency histograms. 404 when metrics are off.
- /healthz: 200 while the process serves HTTP at all.
- /readyz: 200 only while the gRPC health service reports the server
  SERVING (a drain flips it to NOT_SERVING, and this follows) and the state
  store answers a read; 503 with the reason otherwise.

The port is separate from gRPC and unauthenticated: bind it to loopback or a
private network (`telemetry.http_listen`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from grpc_health.v1 import health, health_pb2
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from faregate_server.state.store import StateStore
from faregate_server.telemetry.metrics import GatewayMetrics
from faregate_server.upstream.catalog import Catalog

_STATE_PROBE_TIMEOUT_S = 2.0


class HttpAdmin:
    """Serves the admin endpoints until `aclose`."""

    def __init__(
        self,
        health_servicer: health.aio.HealthServicer,
        state: StateStore,
        catalog: Callable[[], Catalog],
        registry: CollectorRegistry | None,
        metrics: GatewayMetrics | None,
    ) -> None:
        self._health = health_servicer
        self._state = state
        self._catalog = catalog
        self._registry = registry
        self._metrics = metrics
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_readiness)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self, listen: str) -> int:
        """Listens on host:port (port 0: any free one); returns the bound port."""
        host, _, port = listen.rpartition(":")
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]") or None, int(port))
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise OSError(f"cannot listen on {listen} for telemetry.http_listen: {error}") from None
        address = cast(tuple[Any, ...], self._runner.addresses[0])
        return int(address[1])

    async def aclose(self) -> None:
        await self._runner.cleanup()

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        if self._registry is None:
            return web.Response(status=404, text="metrics are off\n")
        if self._metrics is not None:
            await self._metrics.refresh_budgets(self._state)
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _serve_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _serve_readiness(self, request: web.Request) -> web.Response:
        status = await self._health.Check(
            health_pb2.HealthCheckRequest(service=""),
            cast(Any, None),  # the overall status is always set: Check never aborts
        )
        if status.status != health_pb2.HealthCheckResponse.SERVING:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)
            return web.Response(status=503, text=f"not ready: gRPC health is {name}\n")
        # Any budget of the current config will do (a reload may remove one).
        probe_key = next(iter(self._catalog().config.budgets), None)
        if probe_key is not None:
            try:
                async with asyncio.timeout(_STATE_PROBE_TIMEOUT_S):
                    await self._state.budget(probe_key)
            except Exception as error:
                return web.Response(
                    status=503, text=f"not ready: the state store failed a read ({error})\n"
                )
        return web.Response(text="ready\n")
