"""What crosses exec: a few fds made inheritable (everything else of the master's is
close-on-exec and goes), the record in a memfd, and signals held back meanwhile.

The fds are exactly the ones the successor takes over: the control, notify and metrics
sockets, the listening sockets, the spawner's socket, the pidfile's lock, every instance's
log pipe, idle control clients and the one that asked for the upgrade. Nothing is closed
or re-opened, so nothing in a pipe or a socket's backlog is lost, and the pidfile's flock
(held by the open file) never lapses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable, Iterable

ENV = "ORCH_HANDOVER"  # "<fd of the record>" for the successor, "check" for the proof
# Held back (blocked) across exec: a signal that arrives while the new interpreter starts
# waits until the new master handles it, instead of killing it by default (the mask and
# pending signals survive exec; handlers do not).
HELD_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                          signal.SIGUSR2, signal.SIGCHLD})


def record_fd(record: dict[str, Any]) -> int:
    """A memfd holding the record's JSON, at offset 0, close-on-exec until `inherit`."""
    fd = os.memfd_create("orch-handover")
    try:
        data = json.dumps(record).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_record(fd: int) -> Any:
    """The JSON in `fd` (from its start); the fd is closed."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return json.loads(f.read())
    finally:
        os.close(fd)


def inherit(fds: Iterable[int], on: bool = True) -> None:
    """Clear (or set again, `on=False`) close-on-exec on exactly these fds."""
    for fd in fds:
        os.set_inheritable(fd, on)


def successor_argv() -> list[str]:
    """The master's own command line, run by this environment's interpreter as `-m orchestrator`:
    whatever orch `python -m orchestrator` finds now (sys.path, PYTHONPATH, the venv) runs next,
    with the interpreter options the master was started with (-X, -I, -O...)."""
    options = interpreter_options(getattr(sys, "orig_argv", []), sys.argv)
    return [sys.executable, *options, "-m", "orchestrator", *sys.argv[1:]]


def interpreter_options(orig_argv: list[str], argv: list[str]) -> list[str]:
    """The options before `-m orchestrator` or the `orch` script in the interpreter's own
    command line (pure); none when the line has another shape."""
    head = orig_argv[1:len(orig_argv) - len(argv) + 1]  # options, then `-m orchestrator` or the script
    if head[-2:] == ["-m", "orchestrator"]:
        head = head[:-2]
    elif head and argv and head[-1] == argv[0]:
        head = head[:-1]
    else:
        return []
    return head if all(arg.startswith("-") or head[i - 1] in ("-X", "-W") for i, arg in enumerate(head)) else []


def exec_successor(record: int, fds: list[int], caught: Callable[[], list[int]]) -> OSError:
    """exec into the successor with `fds` and the record inherited; returns only if exec
    failed (then everything is as it was, and the error is returned). `caught` gives the
    signals the loop received but did not handle yet: raised again once blocked, they wait,
    pending across exec, for the successor's handlers."""
    env = {**os.environ, ENV: str(record)}
    close_on_exec_except({0, 1, 2, record, *fds})
    inherit([record, *fds])
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    for signum in caught():
        signal.pthread_kill(threading.get_ident(), signum)  # this thread's: it execs
    try:
        os.execve(sys.executable, successor_argv(), env)
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        inherit([record, *fds], on=False)
        return exc
    raise AssertionError("unreachable")  # pragma: no cover


def close_on_exec_except(keep: set[int]) -> None:
    """Mark every other fd close-on-exec: a library that opened one without it (watchdog's
    inotify fd) would otherwise leak one per upgrade."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own fd, closed by now


def release_signals() -> None:
    """In the successor, once its handlers are in place: the signals held back arrive now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


class Taken:
    """The successor's side: the fds of the record wrapped once each, close-on-exec again,
    so no child and no later upgrade inherits one it was not given."""

    def __init__(self, fds: dict[str, Any]):
        self.fds = fds
        self._socks: dict[int, socket.socket] = {}

    def sock(self, fd: int | None) -> socket.socket | None:
        """The socket at `fd` (one object per fd: a socket held under two keys stays one)."""
        if fd is None:
            return None
        if fd not in self._socks:
            os.set_inheritable(fd, False)
            self._socks[fd] = socket.socket(fileno=fd)
        return self._socks[fd]

    def named(self, name: str) -> socket.socket | None:
        return self.sock(self.fds.get(name))

    def plain(self, fd: int) -> int:
        """A non-socket fd (a pipe, the pidfile's lock), close-on-exec again."""
        os.set_inheritable(fd, False)
        return fd
