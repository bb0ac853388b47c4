"""Child processes of the bench, pinned to a core, and what /proc says about them.

`Children` is a context manager that owns every server the bench starts: a
child is registered before the bench waits for its ready line, and leaving the
context (normally, on an error, or on Ctrl-C) terminates each one, killing it
after a short grace. A child is pinned right after it is spawned, while it is
still a single thread, so every thread it starts later inherits the core.

CPU time is read from /proc/PID/stat (utime + stime of the whole thread group,
in clock ticks) and peak memory from VmHWM in /proc/PID/status. The machine's
CPU time from /proc/stat tells how much other processes (not the bench's) ran
meanwhile, which is what makes a run noisy.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
_READY = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
_READY_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.05
_STOP_GRACE_S = 3.0
_LOG_TAIL_BYTES = 2000
_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Child:
    """A started server: its process, the port it announced and its log."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class Children:
    """Starts servers and guarantees they are all gone when the context exits."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], cpus: Set[int]) -> Child:
        """Spawns argv pinned to cpus and waits for `listening on 127.0.0.1:PORT`."""
        log_path = self._log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._processes.append(process)
        pin(process.pid, cpus)
        port = _wait_ready(name, process, log_path)
        # Threads started before the first pin (there should be none) are pinned now.
        pin(process.pid, cpus)
        return Child(name=name, process=process, port=port, log_path=log_path)

    def stop_all(self) -> None:
        """Terminates every child, then kills those still alive after the grace."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + _STOP_GRACE_S
        for process in self._processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()


def _wait_ready(name: str, process: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        match = _READY.search(log_path.read_bytes())
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {process.returncode} before it was ready:\n"
                f"{log_tail(log_path)}"
            )
        time.sleep(_POLL_INTERVAL_S)
    raise RuntimeError(f"{name} not ready after {_READY_TIMEOUT_S:.0f}s:\n{log_tail(log_path)}")


def log_tail(log_path: Path) -> str:
    """The end of a child's log, for error messages."""
    return log_path.read_bytes()[-_LOG_TAIL_BYTES:].decode(errors="replace")


def pin(pid: int, cpus: Set[int]) -> None:
    """Pins every current thread of pid to cpus (threads started later inherit it)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return  # already gone; waiting for it to be ready will say why
    for task in tasks:
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task), cpus)


def cpu_time_s(pid: int) -> float:
    """User plus system CPU time of the whole process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; the fields after it are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS_PER_S


def own_cpu_time_s() -> float:
    """User plus system CPU time of this process (all its threads) so far."""
    times = os.times()
    return times.user + times.system


@dataclass(frozen=True, slots=True)
class MachineCpu:
    """CPU time spent on the whole machine so far, from /proc/stat."""

    busy_s: float
    """user + nice + system, summed over all cpus."""
    steal_s: float
    """Time the hypervisor ran something else while a cpu wanted to run."""


def machine_cpu() -> MachineCpu:
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    user, nice, system, steal = (int(fields[i]) for i in (1, 2, 3, 8))
    return MachineCpu(
        busy_s=(user + nice + system) / _CLOCK_TICKS_PER_S, steal_s=steal / _CLOCK_TICKS_PER_S
    )


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
