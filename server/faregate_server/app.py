"""The composition root: builds every part from a Config and serves gRPC.

`serve()` is one async context manager: entering it builds the HTTP session,
the state store, the catalog of deployments, the gateway and the gRPC server
(with health and reflection always on) inside a single AsyncExitStack;
leaving it drains the server gracefully (drain.py) and tears the rest down
in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from faregate.v1 import admin_pb2, admin_pb2_grpc, router_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from faregate_server.admin import AdminServicer
from faregate_server.auth import Authenticator
from faregate_server.catalog import Catalog
from faregate_server.clock import Clock, SystemClock
from faregate_server.config import Config
from faregate_server.drain import Drain
from faregate_server.gateway import Gateway
from faregate_server.handlers import register_router_service
from faregate_server.planner import Planner
from faregate_server.reload import Reloader
from faregate_server.servicer import RouterServicer
from faregate_server.state import StateStore, open_state
from faregate_server.tls import add_port

logger = logging.getLogger(__name__)

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
# Room above max_request_bytes so a slightly oversized request reaches
# validation and gets a BadRequest naming the limit, not a bare transport error.
_RECEIVE_SLACK_BYTES = 64 * 1024
_SSE_READ_BUFFER_BYTES = 1 << 20


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
) -> AsyncIterator[RunningServer]:
    """Serves `config` until the context exits.

    Args:
        config: The validated config.
        listen: Overrides server.listen.
        clock: Time for windows, cool-downs and breakers (the real clock by default).
        config_path: The file `config` came from, watched for changes and read
            again on reload; None for the embedded config.
        rng: Randomness for canary splits, tie-breaking and jitter.
    """
    clock = clock or SystemClock()
    rng = rng or random.Random()
    async with AsyncExitStack() as stack:
        upstream_slots = sum(model.workers for model in config.models.values())
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=upstream_slots, limit_per_host=upstream_slots),
            read_bufsize=_SSE_READ_BUFFER_BYTES,
        )
        stack.push_async_callback(session.close)

        state = await open_state(config, clock)
        stack.push_async_callback(state.aclose)
        catalog = Catalog(config, session, clock)
        planner = Planner(state, clock, rng)
        gateway = Gateway(catalog, planner, state, clock, rng)
        authenticator = Authenticator(config.auth, clock)
        reloader = Reloader(config_path, gateway, state, authenticator, session, clock)
        if config_path is not None and config.server.reload_poll_s > 0:
            # A background loop owned by the server's lifetime: cancelled and
            # awaited when the server stops.
            watcher = asyncio.create_task(
                reloader.watch(config.server.reload_poll_s), name="faregate-config-watch"
            )
            stack.push_async_callback(_cancel_and_wait, watcher)

        router_server = _grpc_server(config)
        drain = Drain()
        register_router_service(
            router_server, RouterServicer(gateway, config.server, authenticator, drain)
        )
        services = {router_server: [ROUTER_SERVICE]}
        admin_server = router_server
        if config.admin.enabled:
            if config.admin.listen:
                admin_server = _grpc_server(config)
                services[admin_server] = []
            admin_pb2_grpc.add_AdminServiceServicer_to_server(
                AdminServicer(state, gateway, reloader, authenticator), admin_server
            )
            services[admin_server].append(ADMIN_SERVICE)
        ports = {}
        for server, names in services.items():
            health_servicer = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(
                (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            address = (
                (listen or config.server.listen)
                if server is router_server
                else (config.admin.listen)
            )
            ports[server] = add_port(server, address, config.server.tls)
            await server.start()
            if server is router_server:
                stack.push_async_callback(
                    drain.shutdown,
                    server,
                    health_servicer,
                    config.server.shutdown_grace_s,
                    config.server.drain_delay_s,
                )
            else:  # the admin port's calls are short: gRPC's own grace does
                stack.push_async_callback(server.stop, config.server.shutdown_grace_s)
                stack.push_async_callback(health_servicer.enter_graceful_shutdown)
            for service in ("", *names):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        yield RunningServer(
            port=ports[router_server],
            admin_port=ports[admin_server] if config.admin.enabled else None,
            state=state,
            gateway=gateway,
            reloader=reloader,
            drain=drain,
        )


def _grpc_server(config: Config) -> grpc.aio.Server:
    return grpc.aio.server(
        options=[
            (
                "grpc.max_receive_message_length",
                config.server.max_request_bytes + _RECEIVE_SLACK_BYTES,
            ),
            # gRPC refuses headers between its soft and absolute limits at
            # random; equal, the limit is exact. The caller gets
            # RESOURCE_EXHAUSTED from the transport, before faregate sees the call.
            ("grpc.max_metadata_size", config.server.max_header_bytes),
            ("grpc.absolute_max_metadata_size", config.server.max_header_bytes),
        ]
    )


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    # wait() rather than await: the task's cancellation is not ours to raise.
    await asyncio.wait({task})
