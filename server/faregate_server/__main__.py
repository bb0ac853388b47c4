"""The faregate command line: `faregate serve [--config FILE] [--listen HOST:PORT]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from faregate_server import __version__
from faregate_server.app import serve
from faregate_server.config import Config, ConfigError
from faregate_server.config_loader import load_config

logger = logging.getLogger("faregate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="faregate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve gRPC until SIGINT or SIGTERM")
    serve_parser.add_argument("--config", help="YAML config (default: the embedded one)")
    serve_parser.add_argument("--listen", help="host:port, overriding server.listen")
    commands.add_parser("version", help="print the version")
    args = parser.parse_args(argv)

    if args.command == "version":
        print(f"faregate {__version__}")
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"faregate: bad config: {error}", file=sys.stderr)
        return 2
    path = Path(args.config) if args.config else None
    try:
        asyncio.run(_serve_until_signalled(config, args.listen, path))
    except ConfigError as error:  # e.g. a ledger file that is corrupt or locked
        print(f"faregate: cannot start: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"faregate: {error}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signalled(config: Config, listen: str | None, path: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(config, listen=listen, config_path=path) as running:
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
        logger.info("stopping: draining for up to %.1fs", config.server.shutdown_grace_s)


if __name__ == "__main__":
    sys.exit(main())
