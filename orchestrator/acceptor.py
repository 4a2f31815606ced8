"""Accepting connections on a listening socket inside the event loop, bounded: at most a
batch per wake-up, a cap below the fd limit, and a pause instead of a spin when the fd
table is full. Shared by the control socket (control/server.py), the metrics endpoint
(observe/metrics.py) and the dashboard (web/http.py)."""

from __future__ import annotations

import errno
import logging
import resource
import socket
from typing import TYPE_CHECKING, Callable, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .loop import EventLoop, Timer

log = logging.getLogger("orch")
ACCEPT_BATCH = 64  # accepts per wake-up: a connect flood cannot starve the rest of the loop
NO_FDS_PAUSE = 0.1  # seconds a listener is not watched after EMFILE/ENFILE
NO_FDS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
REPORT_EVERY = 10.0  # seconds between two warnings of one kind: a flood must not flood the log


def connection_cap(ceiling: int, share: int, fd_limit: int | None = None) -> int:
    """How many connections a listener may hold: `ceiling`, and at most 1/`share` of the soft
    fd limit (read now unless given: it may have been lowered since start-up)."""
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if fd_limit == resource.RLIM_INFINITY:
        return ceiling
    return max(1, min(ceiling, fd_limit // share))


def admission(held: int, cap: int, any_idle: bool) -> str:
    """What a new connection does (pure): "accept" under the cap; at it, "evict" the oldest
    idle connection to make room, or "refuse" the newcomer when every held one is busy."""
    if held < cap:
        return "accept"
    return "evict" if any_idle else "refuse"


def part(sock: socket.socket, most: int = 1 << 20) -> None:
    """Close a client connection without a reset: send FIN after whatever was queued, read
    (and drop) what the client already sent, then close. (Closing a socket with unread bytes
    makes the kernel answer with RST, which discards the client's unread answer too.)"""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        while most > 0:
            data = sock.recv(65536)
            if not data:
                break
            most -= len(data)
    except OSError:
        pass  # nothing more waiting, or the client is gone already
    sock.close()


class Throttle:
    """Says yes at most once per `every` seconds: rate-limits warnings about floods."""

    def __init__(self, every: float):
        self.every = every
        self._last: float | None = None

    def due(self, now: float) -> bool:
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        return True


class Acceptor:
    """Accepts clients of a listening socket in the loop: a bounded batch per wake-up and,
    out of fds, a short pause instead of a retry. (A client waiting in the backlog keeps the
    socket readable, so retrying at once ran the loop at 100% CPU and starved every instance.)"""

    def __init__(self, loop: EventLoop, sock: socket.socket, on_client: Callable[[socket.socket], None],
                 on_no_fds: Callable[[], None], what: str, has_room: Callable[[], bool] = lambda: True):
        self.loop = loop
        self.sock = sock
        self.on_client = on_client
        self.on_no_fds = on_no_fds  # frees an fd if it can, for the accept after the pause
        self.has_room = has_room  # False: leave clients in the listen backlog until `room_made`
        self.what = what
        self.pauses = 0
        self._timer: Timer | None = None
        self._held = self._closed = self._paused = False
        self._report = Throttle(REPORT_EVERY)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self.has_room():
                self._held = True
                self.loop.remove_reader(self.sock.fileno())
                return
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in NO_FDS:
                    self._pause(exc)
                return  # anything else (ECONNABORTED): the next readable event retries
            self.on_client(client)

    def _pause(self, exc: OSError) -> None:
        self.pauses += 1
        self.loop.remove_reader(self.sock.fileno())
        self._timer = self.loop.call_later(NO_FDS_PAUSE, self._resume)
        if self._report.due(self.loop.time()):
            log.warning("%s: cannot accept a connection (%s): pausing %dms (%d pauses so far)",
                        self.what, exc.strerror or exc, NO_FDS_PAUSE * 1000, self.pauses)
        self.on_no_fds()

    def _resume(self) -> None:
        self._timer = None
        if not (self._held or self._closed or self._paused):
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def room_made(self) -> None:
        """A client left: accept again if `has_room` said no."""
        if self._held:
            self._held = False
            if self._timer is None:
                self._resume()

    def pause(self) -> None:
        """Accept nothing until `unpause`: newcomers wait in the listen backlog (an upgrade's
        exec hands the socket to the next master, backlog and all)."""
        if not self._paused:
            self._paused = True
            self.loop.remove_reader(self.sock.fileno())

    def unpause(self) -> None:
        if self._paused:
            self._paused = False
            if self._timer is None:
                self._resume()

    def close(self) -> None:
        """Stop accepting for good (the caller closes the socket)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.loop.remove_reader(self.sock.fileno())


class Client(Protocol):
    """What `Admission` reads of a connection: when it was accepted."""

    opened: float


C = TypeVar("C", bound=Client)


class Admission(Generic[C]):
    """Who gets in at the cap, for servers of short requests (metrics, dashboard): a newcomer
    is accepted under `connection_cap(ceiling, share)`; at the cap it closes the oldest
    connection still sending its request after `idle_after` seconds, or else waits in the
    listen backlog, and the acceptor looks again when that oldest one will be idle."""

    def __init__(self, loop: EventLoop, clients: dict[socket.socket, C], sending: Callable[[C], bool],
                 drop: Callable[[C], None], what: str, ceiling: int, share: int, idle_after: float):
        self.loop = loop
        self.clients = clients  # oldest first; the server adds and removes them
        self.sending = sending  # True while a client has not sent its whole request
        self.drop = drop  # closes a client for the cap (counted as dropped by the server)
        self.what = what
        self.ceiling, self.share, self.idle_after = ceiling, share, idle_after
        self.acceptor: Acceptor | None = None
        self._recheck: Timer | None = None
        self._report = Throttle(REPORT_EVERY)

    def accept(self, sock: socket.socket, on_client: Callable[[socket.socket], None]) -> Acceptor:
        """Start accepting on `sock`: `on_client` gets each admitted connection, room made."""
        def admit(client: socket.socket) -> None:
            if len(self.clients) >= connection_cap(self.ceiling, self.share):  # has_room: one is idle
                if self._report.due(self.loop.time()):
                    log.warning("%s: %d connections, the cap: closing the oldest idle ones",
                                self.what, len(self.clients))
                self.free_one()
            on_client(client)
        self.acceptor = Acceptor(self.loop, sock, admit, self.free_one, self.what, has_room=self.has_room)
        return self.acceptor

    def _oldest_sending(self) -> C | None:
        return next((c for c in self.clients.values() if self.sending(c)), None)

    def has_room(self) -> bool:
        """Under the cap, or one connection has been sending its request for `idle_after`."""
        oldest = self._oldest_sending()
        now = self.loop.time()
        idle = oldest is not None and oldest.opened <= now - self.idle_after
        if admission(len(self.clients), connection_cap(self.ceiling, self.share), idle) != "refuse":
            return True
        if oldest is not None and self._recheck is None:  # it will be idle then: look again
            self._recheck = self.loop.call_later(oldest.opened + self.idle_after - now, self._room_maybe)
        return False

    def _room_maybe(self) -> None:
        self._recheck = None
        if self.acceptor is not None:
            self.acceptor.room_made()

    def free_one(self) -> None:
        """Close the oldest connection still sending its request after `idle_after` (at the
        cap, or out of fds: its fd serves the next client)."""
        oldest = self._oldest_sending()
        if oldest is not None and oldest.opened <= self.loop.time() - self.idle_after:
            self.drop(oldest)

    def close(self) -> None:
        """Stop accepting for good (the caller closes its clients and the socket)."""
        if self.acceptor is not None:
            self.acceptor.close()
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
