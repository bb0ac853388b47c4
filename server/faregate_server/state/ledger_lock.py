"""One SQLite ledger has one writer: an OS lock held while a process writes it.

Two processes writing one ledger would each sum the committed spend at
start and then each spend the whole remaining budget. So the process that
opens a ledger for writing first takes an exclusive `flock` on a sidecar
file next to it (`<ledger>.lock`) and holds it until the ledger closes; the
kernel drops it when the process dies, SIGKILL included, so a crash never
leaves a stale lock behind. A second writer (another `faregate serve`, or a
restart that overlaps the old process) is refused at once with a message
naming the file and the holder's pid, which the holder writes into the
sidecar.

Why a sidecar and not the ledger itself: SQLite locks the database file with
POSIX record locks, and closing any other descriptor of that file drops all
of this process's record locks on it; a second descriptor of the database
would undermine SQLite's own locking. The sidecar is never deleted (deleting
a lock file lets two processes lock two different files). Readers
(`faregate export-spend`) take no lock: SQLite's WAL lets them read beside
the writer.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from faregate_server.config.schema import ConfigError

logger = logging.getLogger(__name__)

_SUFFIX = ".lock"


class LedgerInUse(ConfigError):
    """Another process holds the ledger's writer lock."""


class WriterLock:
    """The exclusive right to write one ledger, until `release()`."""

    def __init__(self, ledger_path: Path) -> None:
        # Resolved, so two spellings of one file (a symlink, a relative path)
        # meet at one lock.
        resolved = Path(os.path.realpath(ledger_path))
        self.path = resolved.with_name(resolved.name + _SUFFIX)
        self._ledger = ledger_path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock without waiting.

        Raises:
            LedgerInUse: another process holds it (the message names the
                ledger and, when known, the holder's pid).
            ConfigError: the lock file cannot be created.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise ConfigError(
                f"state.path: cannot create the lock file {self.path}: {error.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise LedgerInUse(
                f"state.path: the ledger {self._ledger} is in use by another faregate"
                f" ({who}, lock {self.path}); one SQLite ledger has one writer: stop it"
                " first, or use state.backend redis for several processes"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            # The pid is for the refusal message only: a full disk must not
            # stop the holder, but must not keep a lock nobody owns either.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            logger.warning("could not write this process's pid into %s", self.path)
        self._fd = fd

    def release(self) -> None:
        """Gives the lock up (closing the descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, or None before it has (or if unreadable)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdecimal() else None
