"""The faregate command line.

faregate serve [--config FILE] [--listen HOST:PORT] [--http-listen HOST:PORT] [--workers N]
               [--reuse-port]
faregate export-spend [--config FILE] [--budget-key KEY] [--agent NAME]
faregate check-config FILE
faregate config-schema
faregate new-api-key
faregate version
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from faregate_server import __version__
from faregate_server.app import serve
from faregate_server.config.load import address_problem, load_config
from faregate_server.config.schema import Config, ConfigError, StateBackend, json_schema
from faregate_server.security.api_keys import format_key_hash, new_api_key
from faregate_server.state.export import export_spend
from faregate_server.workers import serve_workers

logger = logging.getLogger("faregate")

# uvloop's event loop where it is installed, else asyncio's own;
# FAREGATE_EVENT_LOOP=asyncio picks asyncio's anyway. grpc.aio polls gRPC's
# sockets on a thread of its own and hands completions to the loop, so the
# gain is on the rest (upstream HTTP, timers, tasks): about 8% less CPU per
# Route and per streamed token on the bench. Its clock ticks in whole
# milliseconds: deadlines, which live on it, never come near that, and
# durations are timed on `Clock.perf_s`, not on it.
_new_event_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
if os.environ.get("FAREGATE_EVENT_LOOP", "uvloop") != "asyncio":
    with contextlib.suppress(ImportError):  # not built for this platform
        from uvloop import new_event_loop as _new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faregate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve gRPC until SIGINT or SIGTERM")
    serve_parser.add_argument("--config", help="YAML config (default: the embedded one)")
    serve_parser.add_argument("--listen", help="host:port, overriding server.listen")
    serve_parser.add_argument(
        "--http-listen",
        help="host:port for /metrics, /healthz and /readyz, overriding telemetry.http_listen"
        " ('' turns it off); with --workers N, worker i takes port+i",
    )
    serve_parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port (SO_REUSEPORT); more than 1 needs state.backend redis",
    )
    serve_parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="let other processes bind the same gRPC port (SO_REUSEPORT), as --workers does"
        " for its workers; without it a port another process holds fails startup",
    )
    export_parser = commands.add_parser(
        "export-spend", help="print the spend ledger as JSON lines, newest first"
    )
    export_parser.add_argument("--config", help="YAML config (default: the embedded one)")
    export_parser.add_argument("--budget-key", default="", help="only this budget's records")
    export_parser.add_argument("--agent", default="", help="only this agent's records")
    check_parser = commands.add_parser(
        "check-config", help="validate a config file without starting anything"
    )
    check_parser.add_argument("file", help="the YAML config to validate")
    commands.add_parser(
        "config-schema", help="print the config file's JSON Schema (for editors) and exit"
    )
    commands.add_parser(
        "new-api-key", help="print a new API key and the hash to store for it in the config"
    )
    commands.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.command == "version":
        print(f"faregate {__version__}")
        return 0
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "config-schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.command == "new-api-key":
        key, stored = new_api_key()
        print(f"key:  {key}")
        print(f"hash: {format_key_hash(stored)}")
        print(
            "Give the key to the agent (it is not stored anywhere); add the hash to"
            " auth.principals.<name>.api_keys.",
            file=sys.stderr,
        )
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as error:
        _report_bad_config(error)
        return 2
    if args.command == "export-spend":
        return _run(export_spend(config, args.budget_key, args.agent, sys.stdout))
    for flag, address in (("--listen", args.listen), ("--http-listen", args.http_listen)):
        problem = address and address_problem(address)
        if problem:
            print(f"faregate: {flag} {problem}", file=sys.stderr)
            return 2
    if args.workers > 1:
        if config.state.backend is not StateBackend.REDIS:
            print(
                f"faregate: --workers {args.workers} needs a shared state backend"
                f" (state.backend: redis); {config.state.backend.value} state lives in one"
                " process, so workers would each spend the whole budget",
                file=sys.stderr,
            )
            return 2
        http_listen = config.telemetry.http_listen if args.http_listen is None else args.http_listen
        return serve_workers(
            args.workers,
            args.config,
            args.listen or config.server.listen,
            config.server,
            http_listen,
        )
    path = Path(args.config) if args.config else None
    return _run(
        _serve_until_signalled(config, args.listen, path, args.http_listen, args.reuse_port)
    )


def _check_config(path: str) -> int:
    """Validates the file as `serve` would (environment included); starts nothing."""
    try:
        config = load_config(path)
    except ConfigError as error:
        _report_bad_config(error)
        return 2
    auth = "on" if config.auth.enabled else "OFF"
    print(
        f"{path}: ok ({len(config.models)} models, {len(config.routes)} routes,"
        f" {len(config.budgets)} budgets, {len(config.limit_pools)} limit pools;"
        f" auth {auth})"
    )
    return 0


def _report_bad_config(error: ConfigError) -> None:
    """Every problem on a line of its own, each line whole (for grep and log shippers)."""
    for problem in error.problems:
        print(f"faregate: bad config: {problem}", file=sys.stderr)


def _run(main: Coroutine[Any, Any, None]) -> int:
    try:
        with asyncio.Runner(loop_factory=_new_event_loop) as runner:
            runner.run(main)
    except ConfigError as error:  # e.g. a ledger file that is corrupt or locked
        print(f"faregate: cannot start: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"faregate: {error}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signalled(
    config: Config,
    listen: str | None,
    path: Path | None,
    http_listen: str | None,
    reuse_port: bool,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # Request log lines go to stderr as bare JSON, one per line, for log
    # shippers, written by a thread: a slow reader of stderr must hold up the
    # log, not the event loop serving every request.
    async with serve(
        config,
        listen=listen,
        config_path=path,
        http_listen=http_listen,
        reuse_port=reuse_port,
        request_log_fd=sys.stderr.fileno(),
    ) as running:
        loop.add_signal_handler(signal.SIGHUP, running.reloader.reload)
        host = (listen or config.server.listen).rsplit(":", 1)[0]
        logger.info(
            "faregate %s serving on %s:%d (%d models, %d routes, %d budgets)",
            __version__,
            host,
            running.port,
            len(config.models),
            len(config.routes),
            len(config.budgets),
        )
        # Tests and scripts read this line to learn the port.
        print(f"faregate listening on {host}:{running.port}", flush=True)
        await stop.wait()
        # A second signal cuts what is still running instead of waiting out the grace.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, running.drain.hurry)


if __name__ == "__main__":
    sys.exit(main())
