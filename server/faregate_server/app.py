"""The composition root: builds every part from a Config and serves gRPC.

`serve()` is one async context manager: entering it builds the HTTP session,
the state store, the catalog of deployments, the gateway and the gRPC server
(with health and reflection, v1 and v1alpha, always on) inside a single AsyncExitStack;
leaving it drains the server gracefully (rpc/drain.py) and tears the rest down
in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import grpc
from faregate.v1 import admin_pb2, admin_pb2_grpc, router_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from faregate_server.clock import Clock, SystemClock
from faregate_server.config.schema import Config
from faregate_server.reload import Reloader
from faregate_server.routing.gateway import Gateway
from faregate_server.routing.planner import Planner
from faregate_server.routing.selection import Selector
from faregate_server.routing.settlement import Settlement
from faregate_server.rpc.admin import AdminServicer
from faregate_server.rpc.admission import AdmissionControl
from faregate_server.rpc.drain import Drain
from faregate_server.rpc.handlers import register_router_service
from faregate_server.rpc.reflection import enable_reflection
from faregate_server.rpc.router import RouterServicer
from faregate_server.security.auth import Authenticator
from faregate_server.security.tls import add_port
from faregate_server.state.opening import open_state
from faregate_server.state.store import StateStore
from faregate_server.telemetry.budget_alerts import BudgetAlerter
from faregate_server.telemetry.http_admin import HttpAdmin
from faregate_server.telemetry.line_writer import LineWriter
from faregate_server.telemetry.metrics import open_metrics
from faregate_server.telemetry.observation import Telemetry
from faregate_server.upstream.catalog import Catalog

if TYPE_CHECKING:
    from aiohappyeyeballs import AddrInfoType

logger = logging.getLogger(__name__)

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
# Room above max_request_bytes so a slightly oversized request reaches
# validation and gets a BadRequest naming the limit, not a bare transport error.
_RECEIVE_SLACK_BYTES = 64 * 1024
# What an upstream stream may buffer in faregate: aiohttp stops reading the
# socket once 2x this (128 KiB) is buffered. A stream is read only as fast as
# its caller takes messages, so this, not the answer's length, bounds a slow
# reader's cost. It does not bound a line: iter_sse takes 4 KiB at a time
# and joins a line's pieces, and one event may hold up to the model's
# max_response_bytes.
_SSE_READ_BUFFER_BYTES = 64 * 1024
# The kernel's receive buffer of each upstream socket (Linux doubles it for
# its bookkeeping). Left alone it autotunes up to net.ipv4.tcp_rmem (32 MiB
# here), and one socket read can take 256 KiB of it at once. 64 KiB still
# carries 640 KB/s per connection at a 100 ms round trip, far above any
# model's token rate.
_UPSTREAM_RECEIVE_BUFFER_BYTES = 64 * 1024


def _upstream_socket(address: AddrInfoType) -> socket.socket:
    """A socket to an upstream, with a small receive buffer (see above)."""
    family, kind, proto, _, _ = address
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UPSTREAM_RECEIVE_BUFFER_BYTES)
    return sock


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A serving faregate, for the command line and for tests."""

    port: int
    admin_port: int | None
    """Where the AdminService is served (`port` unless admin.listen is set);
    None when it is off."""
    state: StateStore
    gateway: Gateway
    reloader: Reloader
    drain: Drain
    telemetry: Telemetry
    admission: AdmissionControl
    http_port: int | None = None
    """The bound port of the HTTP admin server (/metrics, /healthz, /readyz);
    None when telemetry.http_listen is empty."""

    @property
    def catalog(self) -> Catalog:
        return self.gateway.catalog


@asynccontextmanager
async def serve(
    config: Config,
    *,
    listen: str | None = None,
    clock: Clock | None = None,
    config_path: Path | None = None,
    rng: random.Random | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    http_listen: str | None = None,
    reuse_port: bool = False,
    request_log_fd: int | None = None,
) -> AsyncIterator[RunningServer]:
    """Serves `config` until the context exits.

    Args:
        config: The validated config.
        listen: Overrides server.listen.
        clock: Time for windows, cool-downs and breakers (the real clock by default).
        config_path: The file `config` came from, watched for changes and read
            again on reload; None for the embedded config.
        rng: Randomness for canary splits, tie-breaking and jitter.
        tracer_provider: Where spans go (tests hand in an in-memory one);
            None: OTLP when telemetry.otlp_endpoint is set, else no tracing.
        meter_provider: Where metrics go (tests hand in one with an in-memory
            reader); None: a Prometheus reader served at /metrics.
        http_listen: Overrides telemetry.http_listen.
        reuse_port: Let other processes bind the same gRPC ports
            (SO_REUSEPORT), as `--workers` does; otherwise a port that
            another process holds fails startup.
        request_log_fd: Where request log lines go as bare JSON (`faregate
            serve`: stderr), written by a `LineWriter` of this server's own;
            None: to the `faregate.requests` logger, as records.
    """
    clock = clock or SystemClock()
    rng = rng or random.Random()
    async with AsyncExitStack() as stack:
        request_lines = None
        if request_log_fd is not None and config.telemetry.request_log:
            request_lines = LineWriter(request_log_fd, "request log")
            # First in, last out: it writes the lines of the calls the drain
            # lets finish. In a thread: it waits for a slow reader of the fd.
            stack.push_async_callback(asyncio.to_thread, request_lines.close)
        gateway: Gateway | None = None

        def current_catalog() -> Catalog:
            assert gateway is not None
            return gateway.catalog

        drain = Drain()
        alerter = BudgetAlerter(config.telemetry)
        admission = AdmissionControl(config.server, drain)
        metrics, registry, owned_meter_provider = open_metrics(
            config.telemetry,
            meter_provider,
            current_catalog,
            admission.statistics,
            request_lines.statistics if request_lines is not None else None,
            alerter.statistics,
        )
        if owned_meter_provider is not None:
            stack.callback(owned_meter_provider.shutdown)
        telemetry = Telemetry(
            config.telemetry,
            tracer_provider=tracer_provider,
            metrics=metrics,
            now_s=clock.now_s,
            perf_s=clock.perf_s,
            request_lines=request_lines,
        )
        stack.callback(telemetry.shutdown)
        upstream_slots = sum(model.workers for model in config.models.values())
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=upstream_slots,
                limit_per_host=upstream_slots,
                socket_factory=_upstream_socket,
            ),
            read_bufsize=_SSE_READ_BUFFER_BYTES,
            trace_configs=telemetry.http_trace_configs(),
        )
        stack.push_async_callback(session.close)

        # Its webhook sender stops after the state closes, whose last commits
        # may still raise alerts; a child of the server's lifetime.
        alert_sender = asyncio.create_task(alerter.run(), name="faregate-budget-alerts")
        stack.push_async_callback(_cancel_and_wait, alert_sender)
        state = await open_state(config, clock, alerts=alerter)
        stack.push_async_callback(state.aclose)
        catalog = Catalog(config, session, clock)
        planner = Planner(Selector(state.limits, clock, rng), telemetry)
        settlement = Settlement(state, clock, telemetry)
        gateway = Gateway(catalog, planner, settlement, state, clock, rng, telemetry)
        authenticator = Authenticator(config.auth, clock)
        reloader = Reloader(config_path, gateway, state, authenticator, session, clock)
        if config_path is not None and config.server.reload_poll_s > 0:
            # A background loop owned by the server's lifetime: cancelled and
            # awaited when the server stops.
            watcher = asyncio.create_task(
                reloader.watch(config.server.reload_poll_s), name="faregate-config-watch"
            )
            stack.push_async_callback(_cancel_and_wait, watcher)

        router_server = _grpc_server(config, reuse_port)
        register_router_service(
            router_server,
            RouterServicer(gateway, config.server, authenticator, drain, admission, telemetry),
        )
        # Measures from before the first call to after the drain: owned by
        # the server's lifetime like the config watcher.
        lag_probe = asyncio.create_task(admission.watch_loop_lag(), name="faregate-loop-lag-probe")
        stack.push_async_callback(_cancel_and_wait, lag_probe)
        services = {router_server: [ROUTER_SERVICE]}
        admin_server = router_server
        if config.admin.enabled:
            if config.admin.listen:
                admin_server = _grpc_server(config, reuse_port)
                services[admin_server] = []
            admin_pb2_grpc.add_AdminServiceServicer_to_server(
                AdminServicer(state, gateway, reloader, authenticator), admin_server
            )
            services[admin_server].append(ADMIN_SERVICE)
        healths = {}
        for server, names in services.items():
            health_servicer = healths[server] = health.aio.HealthServicer()
            # Not ready until the server listens (the servicer starts out SERVING).
            await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            # Each port describes what it serves: the AdminService only where it is.
            enable_reflection(server, (*names, health.SERVICE_NAME))
        # Up before gRPC and down after it, so /readyz answers 503 through a drain;
        # it follows the health of the server that routes.
        http_port = None
        http_address = config.telemetry.http_listen if http_listen is None else http_listen
        if http_address:
            http_admin = HttpAdmin(
                healths[router_server], state, current_catalog, registry, metrics
            )
            http_port = await http_admin.start(http_address)
            stack.push_async_callback(http_admin.aclose)
            logger.info(
                "telemetry HTTP (/metrics, /healthz, /readyz) on %s:%d (pid %d)",
                http_address.rpartition(":")[0],
                http_port,
                os.getpid(),
            )
        # Every port is bound before any server starts, so a port that is
        # taken fails startup with nothing to drain.
        ports = {
            server: add_port(
                server,
                (listen or config.server.listen)
                if server is router_server
                else config.admin.listen,
                config.server.tls,
            )
            for server in services
        }
        # The exit stack runs these in reverse: the router drains first, while
        # a separate admin port still answers; then the admin port stops, its
        # calls being short enough for gRPC's own grace.
        for server in reversed(services):
            await server.start()
            if server is router_server:
                stack.push_async_callback(
                    drain.shutdown,
                    server,
                    healths[server],
                    config.server.shutdown_grace_s,
                    config.server.drain_delay_s,
                )
            else:
                stack.push_async_callback(server.stop, config.server.shutdown_grace_s)
                stack.push_async_callback(healths[server].enter_graceful_shutdown)
        for server, names in services.items():
            for service in ("", *names):
                await healths[server].set(service, health_pb2.HealthCheckResponse.SERVING)
        yield RunningServer(
            port=ports[router_server],
            admin_port=ports[admin_server] if config.admin.enabled else None,
            state=state,
            gateway=gateway,
            reloader=reloader,
            drain=drain,
            telemetry=telemetry,
            admission=admission,
            http_port=http_port,
        )


def _grpc_server(config: Config, reuse_port: bool) -> grpc.aio.Server:
    # No maximum_concurrent_rpcs and no HTTP/2 max_concurrent_streams:
    # admission.py caps calls itself. gRPC's cap answers RESOURCE_EXHAUSTED
    # (the caller's quota, by our catalogue) with no reason or pushback and
    # counts health checks too; a stream limit makes clients queue calls
    # silently on their side until a stream frees.
    return grpc.aio.server(
        options=[
            # gRPC sets SO_REUSEPORT unless told not to, which lets a second
            # faregate bind a port this one serves and take half its calls.
            ("grpc.so_reuseport", int(reuse_port)),
            (
                "grpc.max_receive_message_length",
                config.server.max_request_bytes + _RECEIVE_SLACK_BYTES,
            ),
            # gRPC refuses headers between its soft and absolute limits at
            # random; equal, the limit is exact. The caller gets
            # RESOURCE_EXHAUSTED from the transport, before faregate sees the call.
            ("grpc.max_metadata_size", config.server.max_header_bytes),
            ("grpc.absolute_max_metadata_size", config.server.max_header_bytes),
        ],
    )


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    # wait() rather than await: the task's cancellation is not ours to raise.
    await asyncio.wait({task})
