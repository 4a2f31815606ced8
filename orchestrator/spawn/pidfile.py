"""The pidfile, locked for the master's whole life: one master per config, and the lock is
taken before anything else happens, so a second `orch up` can never harm the first fleet."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import OrchError


class PidLock:
    """The pidfile, locked for the master's whole life: one master per config."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def acquire(self) -> "PidLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise OrchError(f"another orch master (pid {other or '?'}) is already running "
                            f"for this config (pidfile {self.path} is locked)") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def release(self) -> None:
        if self.fd >= 0:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1
