"""`faregate serve --workers N`: N server processes sharing one port.

Each worker is a whole `faregate serve --reuse-port` of its own: its gRPC
ports are bound with SO_REUSEPORT (which a plain `faregate serve` turns off,
so that a second process cannot share its port by accident), and the kernel
spreads incoming connections across them, so a machine's cores are all used.
They share budgets, limits, the ledger and request ids through the Redis
state backend, which is why more than one worker requires it: an SQLite
ledger has one writer (state/ledger_lock.py), so `--workers N` with sqlite is
refused before any worker starts, and `--workers 1` is a plain
`faregate serve`. Breakers, latency averages and worker pools stay per
process, as they would per replica.

Each worker serves its own metrics and health on its own HTTP port, since a
scrape must see one process, never a random one: worker i takes the
configured `telemetry.http_listen` port + i (or, for port 0, a free port of
its own), and logs it. Scrape each worker's port; their series add up.

The parent only supervises: it passes SIGTERM, SIGINT and SIGHUP on, and
if a worker dies on its own it stops the rest and exits non-zero, so the
process supervisor above (systemd, Kubernetes) restarts the whole set.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from types import FrameType

from faregate_server.config.schema import ServerConfig

logger = logging.getLogger(__name__)

# Beyond the drain, how long a stopping worker may take (settling cut calls,
# closing state) before it is killed.
_STOP_MARGIN_S = 30.0


def serve_workers(
    count: int,
    config_path: str | None,
    listen: str,
    settings: ServerConfig,
    http_listen: str = "",
) -> int:
    """Runs `count` workers on `listen` until signalled; returns the exit status.

    It is 0 when every worker stopped cleanly after SIGTERM or SIGINT (each
    drains as `faregate serve` does), 1 when one died on its own or failed to stop.
    """
    stop_timeout_s = settings.drain_delay_s + settings.shutdown_grace_s + _STOP_MARGIN_S
    host, _, port = listen.rpartition(":")
    # Port 0 means any free port, but every worker must take the same one:
    # pick it here and hold it (bound, never listening) while they run.
    holder = None
    if port == "0":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host.strip("[]"), 0))
        port = str(holder.getsockname()[1])
    command = [
        *(sys.executable, "-m", "faregate_server", "serve", "--reuse-port"),
        *("--listen", f"{host}:{port}"),
    ]
    if config_path is not None:
        command += ["--config", config_path]
    workers: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    # Handlers first, so no signal finds a worker unsupervised; SIGHUP is
    # ignored by workers (inherited) until they install their reload handler.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    workers += [
        subprocess.Popen(
            [*command, "--http-listen", worker_http_listen(http_listen, index)],
            stdout=subprocess.PIPE,
        )
        for index in range(count)
    ]
    signal.signal(signal.SIGHUP, forward)
    try:
        # Each worker prints one line once it listens; say so once all do.
        ready = [_readiness(worker) for worker in workers]
        if all(ready):
            logger.info("%d workers serving on %s:%s", count, host, port)
            print(ready[0], flush=True)
        pid, status = os.wait()
        crashed = not stopping
        if crashed:
            code = os.waitstatus_to_exitcode(status)
            logger.error("worker %d exited on its own (%d); stopping the others", pid, code)
            forward(signal.SIGTERM, None)
        codes = [_wait(worker, stop_timeout_s) for worker in workers if worker.pid != pid]
        codes.append(os.waitstatus_to_exitcode(status))
        return 1 if crashed or any(codes) else 0
    finally:
        if holder is not None:
            holder.close()


def worker_http_listen(http_listen: str, index: int) -> str:
    """Worker `index`'s admin HTTP address: the base port + index ("" stays off)."""
    if not http_listen:
        return ""
    host, _, port = http_listen.rpartition(":")
    return f"{host}:{int(port) + index}" if int(port) else http_listen


def _readiness(worker: subprocess.Popen[bytes]) -> str:
    """The worker's "listening" line ("" if it ended first)."""
    assert worker.stdout is not None
    line = worker.stdout.readline().decode().strip()
    worker.stdout.close()  # nothing else comes on stdout
    return line


def _wait(worker: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return worker.wait(timeout_s)
    except subprocess.TimeoutExpired:
        worker.kill()
        return worker.wait()
