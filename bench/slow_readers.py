"""`python -m bench.slow_readers`: faregate's memory with 200 slow stream readers.

Method. An aiohttp upstream (a child process, on the readers' core) streams
each request as fast as TCP lets it: `EVENTS` SSE events of `_EVENT_CHARS` characters (about
200 KB of text per stream), counting the bytes it managed to write. faregate
runs as a child process (`faregate serve`, memory state, no auth). 200
readers open StreamRoute with a deadline of `_DEADLINE_S` and read one
message every `_READ_INTERVAL_S`. The readers run twice, each time against
a fresh faregate: once over plain grpc.aio channels (BDP probing on, as a
default grpc-python client), and once over the typed client's channel
options (`faregate_client.STREAM_CHANNEL_OPTIONS`: a small receive window).

Printed per run: faregate's peak RSS (VmHWM) before the readers and after,
the difference per stream, how many bytes the upstream wrote and how many
the readers' applications read. Not a test: it reports, it does not gate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from aiohttp import web
from faregate.v1 import router_pb2, router_pb2_grpc
from faregate_client import STREAM_CHANNEL_OPTIONS

from bench.procs import Children, peak_rss_bytes, pin

READERS = 200
_CHANNELS = 8
EVENTS = 800
"""Per stream, by default; `--events 32000` makes 8 MB streams."""
_EVENT_CHARS = 256
_DEADLINE_S = 4.0
_READ_INTERVAL_S = 0.1
_MODEL = "flood"
_BUDGET = "bench"


@dataclass
class _Upstream:
    """Counts what it wrote; a client that went away ends its stream."""

    events: int
    written_bytes: int = 0
    streams: int = 0

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.streams += 1
        event = _event({"choices": [{"index": 0, "delta": {"content": "x" * _EVENT_CHARS}}]})
        try:
            for _ in range(self.events):
                await response.write(event)
                self.written_bytes += len(event)
        except ConnectionError:  # faregate closed the stream: its reader went away
            return response
        await response.write(
            _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
        await response.write(b"data: [DONE]\n\n")
        return response

    async def written(self, request: web.Request) -> web.Response:
        return web.Response(text=str(self.written_bytes))


async def _serve_upstream(events: int) -> None:
    upstream = _Upstream(events)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.chat)
    app.router.add_get("/written", upstream.written)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"upstream listening on 127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.get_running_loop().create_future()  # until terminated


async def _written_bytes(session: aiohttp.ClientSession, target: str) -> int:
    async with session.get(f"http://{target}/written") as response:
        return int(await response.text())


def _event(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _config(api_base: str) -> dict[str, Any]:
    return {
        "server": {"listen": "127.0.0.1:0", "default_route": _MODEL, "default_deadline_s": 30},
        "models": {
            _MODEL: {
                "provider": "openai",
                "api_base": api_base,
                "input_usd_per_mtok": 1.0,
                "output_usd_per_mtok": 2.0,
                "context_window_tokens": 1_000_000,
                "max_output_tokens": 500_000,
                "workers": 512,
                "queue": 512,
                "idle_timeout_s": 30,
            }
        },
        "budgets": {_BUDGET: {"limit_usd": 1_000_000, "window": "none"}},
        "state": {"backend": "memory"},
        "auth": {"enabled": False},
        "telemetry": {"http_listen": "127.0.0.1:0"},
    }


@dataclass(frozen=True, slots=True)
class RunResult:
    label: str
    readers: int
    rss_before_bytes: int
    rss_peak_bytes: int
    upstream_bytes: int
    read_messages: int
    read_bytes: int
    statuses: dict[str, int]

    def render(self) -> str:
        per_stream = (self.rss_peak_bytes - self.rss_before_bytes) / self.readers
        statuses = ", ".join(f"{code} {count}" for code, count in sorted(self.statuses.items()))
        return (
            f"{self.label}: peak RSS {self.rss_before_bytes / 2**20:.0f} ->"
            f" {self.rss_peak_bytes / 2**20:.0f} MiB"
            f" (+{(self.rss_peak_bytes - self.rss_before_bytes) / 2**20:.0f} MiB,"
            f" {per_stream / 1024:.0f} KiB per stream);"
            f" upstream wrote {self.upstream_bytes / 2**20:.1f} MiB,"
            f" readers read {self.read_messages} messages"
            f" ({self.read_bytes / 2**20:.2f} MiB of text); {statuses}"
        )


async def _read_slowly(stub: router_pb2_grpc.RouterServiceStub) -> tuple[int, int, str]:
    request = router_pb2.StreamRouteRequest(
        messages=[router_pb2.Message(role=router_pb2.ROLE_USER, content="flood me")],
        budget_key=_BUDGET,
        max_output_tokens=400_000,
    )
    call: Any = stub.StreamRoute(request, timeout=_DEADLINE_S)
    messages = text_bytes = 0
    try:
        async for event in call:
            messages += 1
            text_bytes += len(event.delta.text)
            await asyncio.sleep(_READ_INTERVAL_S)
    except grpc.aio.AioRpcError as error:
        return messages, text_bytes, error.code().name
    return messages, text_bytes, "OK"


async def _run(
    label: str,
    faregate_argv: Sequence[str],
    options: Sequence[tuple[str, Any]],
    readers: int,
    events: int,
) -> RunResult:
    with tempfile.TemporaryDirectory() as scratch, Children(Path(scratch)) as children:
        upstream = children.start(
            "upstream",
            [sys.executable, "-m", "bench.slow_readers", "--serve-upstream", str(events)],
            {1},
        )
        config = Path(scratch) / "faregate.yaml"
        config.write_text(yaml.safe_dump(_config(f"http://{upstream.target}/v1")))
        faregate = children.start(
            "faregate", [*faregate_argv, "serve", "--config", str(config)], {0}
        )
        channels = [
            grpc.aio.insecure_channel(faregate.target, options=list(options))
            for _ in range(_CHANNELS)
        ]
        async with aiohttp.ClientSession() as session:
            try:
                stubs = [router_pb2_grpc.RouterServiceStub(channel) for channel in channels]
                await _read_slowly(stubs[0])  # warm-up: first-use costs are paid
                before = peak_rss_bytes(faregate.pid)
                written_before = await _written_bytes(session, upstream.target)
                results = await asyncio.gather(
                    *(_read_slowly(stubs[index % _CHANNELS]) for index in range(readers))
                )
                await asyncio.sleep(1.0)  # let the handlers settle
                peak = peak_rss_bytes(faregate.pid)
                written = await _written_bytes(session, upstream.target) - written_before
            finally:
                for channel in channels:
                    await channel.close()
    statuses: dict[str, int] = {}
    for _, _, code in results:
        statuses[code] = statuses.get(code, 0) + 1
    return RunResult(
        label=label,
        readers=readers,
        rss_before_bytes=before,
        rss_peak_bytes=peak,
        upstream_bytes=written,
        read_messages=sum(messages for messages, _, _ in results),
        read_bytes=sum(text for _, text, _ in results),
        statuses=statuses,
    )


async def measure(readers: int, events: int) -> list[RunResult]:
    argv = [sys.executable, "-m", "faregate_server"]
    pin(os.getpid(), {1})  # readers and upstream on core 1, faregate on core 0
    return [
        await _run("grpc-python defaults", argv, [], readers, events),
        await _run("typed client options", argv, STREAM_CHANNEL_OPTIONS, readers, events),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="faregate's memory with slow stream readers.")
    parser.add_argument("--readers", type=int, default=READERS)
    parser.add_argument("--events", type=int, default=EVENTS, help="SSE events per stream")
    parser.add_argument("--serve-upstream", type=int, metavar="EVENTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream is not None:
        asyncio.run(_serve_upstream(args.serve_upstream))
        return
    print(
        f"slow readers: {args.readers} streams, 1 message per {_READ_INTERVAL_S}s,"
        f" deadline {_DEADLINE_S}s, {args.events} x {_EVENT_CHARS}-char events upstream"
    )
    for result in asyncio.run(measure(args.readers, args.events)):
        print(result.render(), flush=True)


if __name__ == "__main__":
    main()
