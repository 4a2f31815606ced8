"""Sockets nobody serves: when no instance that names a held socket has been running for
its `reset_after` (10 s by default; every one crash-looping, stopped, or failing to start), connections would
sit in its backlog until their clients time out. From then on the master takes each new
connection off the backlog and resets it, so clients fail at once (and a load balancer
tries elsewhere), until an instance runs again. A restart or a short backoff is within the
delay: the backlog still holds connections across it, as a held socket should.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
from typing import TYPE_CHECKING, Callable, Iterable

from ..loop import EventLoop, Timer
from .events import Event, StateChanged
from .states import State

if TYPE_CHECKING:
    from .instance import Instance

log = logging.getLogger("orch")
RESETS_PER_WAKE = 64


class UnservedSockets:
    """Watches which held sockets have a running user; resets connections on the others."""

    def __init__(self, loop: EventLoop, instances: Callable[[], Iterable["Instance"]],
                 sockets: Callable[[], dict[str, socket.socket]], delay: Callable[[str], float]):
        self.loop = loop
        self.instances = instances  # every instance of the fleet
        self.sockets = sockets  # the held listening sockets by key
        self.delay = delay  # by key: the socket's reset_after
        self.since: dict[str, float] = {}  # key -> when it last had no running user
        self.resetting: dict[str, int] = {}  # key -> the fd the loop watches
        self.reset_count: dict[str, int] = {}
        self._timers: dict[str, Timer] = {}
        self._pending = False

    def on_event(self, event: Event) -> None:
        if isinstance(event, StateChanged) and event.instance.spec.socket_keys and not self._pending:
            self._pending = True  # once per wake-up, however many instances changed
            self.loop.call_soon(self.recount)

    def recount(self) -> None:
        """Which sockets have a running user now; start or stop the clocks and resets."""
        self._pending = False
        held = self.sockets()
        served = {key for inst in self.instances() if inst.state is State.RUNNING
                  for key in inst.spec.socket_keys}
        for key in held:
            if key in served:
                self._served(key)
            elif key not in self.since:
                self.since[key] = self.loop.time()
                self._timers[key] = self.loop.call_later(self.delay(key), lambda k=key: self._start_resetting(k))
        for key in list(self.since):
            if key not in held:
                self._served(key)

    def _served(self, key: str) -> None:
        self.since.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        fd = self.resetting.pop(key, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            log.info("socket %s has a running instance again: connections wait in its backlog", key)

    def _start_resetting(self, key: str) -> None:
        self._timers.pop(key, None)
        sock = self.sockets().get(key)
        if sock is None or key not in self.since or key in self.resetting:
            return
        log.warning("socket %s: no instance has run for %.0fs; new connections are reset until one does",
                    key, self.loop.time() - self.since[key])
        self.resetting[key] = sock.fileno()
        self.loop.add_reader(sock.fileno(), lambda: self._reset(key, sock))

    def _reset(self, key: str, sock: socket.socket) -> None:
        for _ in range(RESETS_PER_WAKE):
            try:
                conn = _accept_now(sock)
            except OSError:  # no fd to take it with: look again shortly instead of spinning
                fd = self.resetting.get(key)
                if fd is not None:
                    self.loop.remove_reader(fd)
                    self.loop.call_later(0.1, lambda: key in self.resetting and self.loop.add_reader(
                        fd, lambda: self._reset(key, sock)))
                return
            if conn is None:
                return
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
            conn.close()
            self.reset_count[key] = self.reset_count.get(key, 0) + 1

    def status(self, key: str) -> dict[str, object]:
        """For `orch status`: since when the socket has no running user, and whether it resets."""
        since = self.since.get(key)
        return {"unserved_for": None if since is None else round(self.loop.time() - since, 1),
                "resetting": key in self.resetting, "reset": self.reset_count.get(key, 0)}

    def close(self) -> None:
        for key in list(self.since):
            self._served(key)


def _accept_now(sock: socket.socket) -> socket.socket | None:
    """accept() without blocking, on a socket the workers share: O_NONBLOCK is a flag of the
    file they share too, so it is set only around this one call (a worker that is starting
    may have taken the connection since the loop saw it). OSError (EMFILE) is raised."""
    fd = sock.fileno()
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        conn, _ = sock._accept()  # type: ignore[attr-defined]  # the raw fd: no timeout games
        return socket.socket(sock.family, sock.type, sock.proto, fileno=conn)
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return None
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
