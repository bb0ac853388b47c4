"""Shared fixtures: a fake upstream, test configs, and a real faregate on loopback."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import random
import signal
import sys
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from faregate.v1.router_pb2 import RouteResponse
from faregate_client import FaregateClient
from faregate_server.app import RunningServer, serve
from faregate_server.clock import Clock
from faregate_server.config.load import parse_config
from faregate_server.config.schema import Config

from tests.fakes.upstream import FakeUpstream
from tests.support.eventually import eventually
from tests.support.redis_server import RedisServer

TEST_ENV = {"FAKE_OPENAI_KEY": "sk-test-openai", "FAKE_ANTHROPIC_KEY": "sk-ant-test"}


def base_config(upstream_url: str) -> dict[str, Any]:
    """A config dict pointing every model at the fake upstream; tests edit a copy."""
    return {
        "server": {"listen": "127.0.0.1:0", "default_route": "default"},
        "models": {
            "gpt-fake": {
                "provider": "openai",
                "api_base": f"{upstream_url}/v1",
                "api_key_env": "FAKE_OPENAI_KEY",
                "input_usd_per_mtok": 2.50,
                "output_usd_per_mtok": 10.00,
                "quality": 0.9,
                "context_window_tokens": 8192,
                "max_output_tokens": 100,
                # Speaks as a server that only knows the older field would;
                # cheap-fake takes the default, max_completion_tokens.
                "output_cap_field": "max_tokens",
                # Counted as an OpenAI model: the tests' expected counts are cl100k's.
                "tokenizer": "cl100k_base",
                "workers": 8,
                "queue": 16,
                "idle_timeout_s": 1.0,
                # Tests hold whole answers at will (gates, hangs): only the
                # first-byte timeout tests want it shorter.
                "first_byte_timeout_s": 30.0,
            },
            "claude-fake": {
                "provider": "anthropic",
                "api_base": upstream_url,
                "api_key_env": "FAKE_ANTHROPIC_KEY",
                "input_usd_per_mtok": 3.00,
                "output_usd_per_mtok": 15.00,
                "quality": 0.95,
                "context_window_tokens": 8192,
                "max_output_tokens": 100,
                "workers": 8,
                "queue": 16,
                "idle_timeout_s": 1.0,
                # Tests hold whole answers at will (gates, hangs): only the
                # first-byte timeout tests want it shorter.
                "first_byte_timeout_s": 30.0,
            },
            "cheap-fake": {
                "provider": "openai",
                "api_base": f"{upstream_url}/v1",
                "input_usd_per_mtok": 0.15,
                "output_usd_per_mtok": 0.60,
                "tokenizer": "cl100k_base",
                "quality": 0.2,
                "context_window_tokens": 8192,
                "max_output_tokens": 100,
                "workers": 8,
                "queue": 16,
                "idle_timeout_s": 1.0,
                # Tests hold whole answers at will (gates, hangs): only the
                # first-byte timeout tests want it shorter.
                "first_byte_timeout_s": 30.0,
            },
        },
        "routes": {"default": ["gpt-fake", "cheap-fake"]},
        "budgets": {"team": {"limit_usd": 100, "window": "none"}},
        # One attempt: these tests see each upstream failure as it is; retry
        # tests turn retries on.
        "retries": {"max_attempts": 1},
        # The state contract is the same on every backend
        # (state/test_state_contract.py); these tests need no durability.
        "state": {"backend": "memory"},
        # Authentication has its own tests (e2e/test_auth.py).
        "auth": {"enabled": False},
        # Any free port: parallel runs on one machine must not collide.
        "telemetry": {"http_listen": "127.0.0.1:0"},
    }


def to_config(data: dict[str, Any]) -> Config:
    """The config of `data`, with the loop-lag guard off unless it says otherwise.

    The guard has its own tests (e2e/test_admission.py). Elsewhere the test's
    one event loop runs the clients, the fake upstream and faregate together,
    so its lag says nothing of faregate's load.
    """
    data = {**data, "server": {"loop_lag_limit_s": 0, **data.get("server", {})}}
    return parse_config(yaml.safe_dump(data), env=TEST_ENV)


@dataclass
class Faregate:
    """A running faregate and a typed client connected to it."""

    running: RunningServer
    client: FaregateClient

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def reserved_nano_usd(self, budget_key: str = "team") -> int:
        return (await self.running.state.budget(budget_key)).reserved_nano_usd

    async def spent_nano_usd(self, budget_key: str = "team") -> int:
        return (await self.running.state.budget(budget_key)).spent_nano_usd


async def read_stream(stream: AsyncIterable[str], into: list[str] | None = None) -> list[str]:
    """Reads a stream to its end, keeping each text in `into` even if it fails."""
    texts = [] if into is None else into
    async for text in stream:
        texts.append(text)
    return texts


@asynccontextmanager
async def faregate_process(
    *args: str, listen: str = "127.0.0.1:0"
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`faregate serve ARGS --listen LISTEN` in a process of its own.

    Yields the process and its target once it listens. On exit a process still
    running is stopped with SIGTERM and must exit 0 (a graceful stop).
    """
    # A working directory of its own: the embedded config's SQLite state
    # goes there, not into the checkout.
    workdir = tempfile.TemporaryDirectory(prefix="faregate-")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate_server", "serve", *args, "--listen", listen,
        "--http-listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, **TEST_ENV}, cwd=workdir.name,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("faregate listening on "), line
        yield process, line.split()[-1]
    finally:
        if process.returncode is None:
            process.terminate()
            async with asyncio.timeout(10):
                assert await process.wait() == 0
        workdir.cleanup()


async def sigkill_under_load(config_path: Path, budget_key: str) -> list[RouteResponse]:
    """Serves `config_path` in a process, kills it with SIGKILL while eight
    callers keep it busy (after 50 answers), and returns every answer received."""
    answered: list[RouteResponse] = []
    async with (
        faregate_process("--config", str(config_path)) as (process, target),
        # No request ids: a claim round trip before each reservation would
        # shorten the time callers hold reservations, which the kill must catch.
        FaregateClient(target, generate_request_ids=False) as client,
    ):

        async def keep_calling() -> None:
            while True:
                answered.append(await client.route("hi", budget_key=budget_key, timeout_s=5))

        callers = [asyncio.create_task(keep_calling()) for _ in range(8)]
        await eventually(lambda: len(answered) >= 50, timeout_s=20)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await asyncio.gather(*callers, return_exceptions=True)
    return answered


StartFaregate = Callable[..., AbstractAsyncContextManager[Faregate]]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests keep apart by key namespace."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_state(redis_server: RedisServer, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A `state` config section for the session's Redis, in a namespace of this test's own."""
    namespace = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    return {"backend": "redis", "redis": {"url": redis_server.url, "namespace": namespace}}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    yield fake
    await fake.aclose()


@pytest.fixture
def config_data(upstream: FakeUpstream) -> dict[str, Any]:
    return copy.deepcopy(base_config(upstream.base_url))


@pytest.fixture
def start_faregate() -> StartFaregate:
    """Starts faregate on 127.0.0.1 with a given config (and optional clock, and
    further `serve()` options such as tracer and meter providers)."""

    @asynccontextmanager
    async def start(
        config: Config,
        clock: Clock | None = None,
        config_path: Path | None = None,
        **serve_options: Any,
    ) -> AsyncIterator[Faregate]:
        async with AsyncExitStack() as stack:
            running = await stack.enter_async_context(
                serve(
                    config,
                    listen="127.0.0.1:0",
                    clock=clock,
                    config_path=config_path,
                    rng=random.Random(7),
                    **serve_options,
                )
            )
            client = FaregateClient(f"127.0.0.1:{running.port}")
            stack.push_async_callback(client.aclose)
            yield Faregate(running, client)

    return start


@pytest.fixture
async def faregate(
    start_faregate: StartFaregate, config_data: dict[str, Any]
) -> AsyncIterator[Faregate]:
    """faregate on the base test config."""
    async with start_faregate(to_config(config_data)) as running:
        yield running
