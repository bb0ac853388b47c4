"""A real redis-server on a free loopback port, for tests that claim Redis behaviour.

CI installs redis-server from Debian's packages (.ci/run); nothing here fakes it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

_START_TIMEOUT_S = 10.0


class RedisServer:
    """One redis-server process with no persistence, stoppable and restartable
    on the same port (to test an outage and the recovery after it)."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server is not installed: `apt-get install -y redis-server` (.ci/run does)"
            )
        self._executable = executable
        self._directory = directory
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        arguments = [
            self._executable,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._directory),
            "--loglevel", "warning",
            "--enable-debug-command", "local",  # DEBUG SLEEP makes a slow Redis
        ]  # fmt: skip
        self._process = subprocess.Popen(
            arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._answers():
                return
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
