"""A wake-up socketpair for signals: CPython writes each signal's number to it (through
`signal.set_wakeup_fd`), so a process waiting in select or poll wakes for a signal with
no work done in the handler. The master's loop, the spawner, each zygote and each Python
worker use it; it imports nothing of orch."""

from __future__ import annotations

import signal
import socket


def nonblocking_pair() -> tuple[socket.socket, socket.socket]:
    """(read end, write end) of a socketpair, both non-blocking."""
    read, write = socket.socketpair()
    read.setblocking(False)
    write.setblocking(False)
    return read, write


def wakeup_pair() -> tuple[socket.socket, socket.socket]:
    """A `nonblocking_pair` whose write end is installed as the wakeup fd."""
    read, write = nonblocking_pair()
    signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    return read, write


def drain(read: socket.socket) -> bytes:
    """The signal numbers written since the last drain (b"" when none)."""
    try:
        return read.recv(4096)
    except (BlockingIOError, InterruptedError):
        return b""
