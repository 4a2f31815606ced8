"""One tcp or http probe check as non-blocking work on the master's loop: a connect watched
for writability, then (http) a GET written and its status line read. Nothing here waits:
every step is a callback, and a timer ends the check at the probe's timeout."""

from __future__ import annotations

import errno
import os
import socket
from _socket import socket as raw_socket
from typing import Callable

from ..config.probes import Probe
from ..loop import EventLoop, Timer

MAX_HEAD = 8192  # bytes read looking for the status line
_FAMILY = {False: socket.AF_INET, True: socket.AF_INET6}
_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# The C socket type, not socket.socket: its Python wrapper (__init__, io refs, close through
# _real_close) cost about a fifth of a bare loopback connect + close on the bench machine.


def status_verdict(line: bytes, path: str, expected: int | None) -> tuple[bool, str]:
    """(passed, detail) for an HTTP status line such as b"HTTP/1.1 200 OK" (pure)."""
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"no HTTP status line from {path}"
    code = int(parts[1])
    ok = code == expected if expected is not None else 200 <= code < 400
    return ok, "ok" if ok else f"HTTP {code} from {path}"


def connect(probe: Probe) -> tuple[raw_socket | None, int | str]:
    """A non-blocking socket to the probe's address: (sock, 0) connected already, (sock,
    EALREADY) still connecting, or (None, what failed) with nothing left open. On loopback the
    kernel usually completes the handshake inside connect(2): a second connect_ex says so
    (0 or EISCONN), and a tcp check then needs no timer, no epoll registration and no wake-up
    (bench/RESULTS.md, probes-idle: that round trip was about a third of orch's own cost)."""
    address = (probe.host, probe.port)
    sock = None
    try:
        sock = raw_socket(_FAMILY[":" in probe.host], _SOCK_TYPE)
        err = sock.connect_ex(address)
        if err == errno.EINPROGRESS:
            err = sock.connect_ex(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        return None, f"cannot connect to {probe.address}: {exc.strerror or exc}"
    if err == 0 or err == errno.EISCONN:
        return sock, 0
    if err == errno.EALREADY or err == errno.EINPROGRESS:
        return sock, errno.EALREADY
    sock.close()
    return None, f"{probe.address}: {os.strerror(err).lower()}"


class Check:
    """One check of one probe; `done(passed, detail)` is called once, unless cancelled."""

    def __init__(self, loop: EventLoop, probe: Probe, done: Callable[[bool, str], None]) -> None:
        self.loop = loop
        self.probe = probe
        self.done = done
        self.sock: raw_socket | None = None
        self.timer: Timer | None = None
        self.head = b""
        self.finished = False
        self.watching = 0  # 0 nothing, 1 writer, 2 reader

    def start(self, opened: tuple[raw_socket | None, int | str] | None = None) -> None:
        """Connect (or go on with what `connect` returned); watch a connect still under way,
        with the timeout; an http check then sends its GET and reads the reply."""
        sock, state = opened if opened is not None else connect(self.probe)
        if sock is None:
            self._finish(False, str(state))
            return
        self.sock = sock
        if state == 0:
            self._established()
            return
        self.timer = self.loop.call_later(self.probe.timeout, self._timed_out)
        self.watching = 1
        self.loop.add_writer(sock.fileno(), self._connected)

    def cancel(self) -> None:
        """End the check without a result (its instance stopped)."""
        self._close()

    def _connected(self) -> None:
        assert self.sock is not None
        self._unwatch()
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._finish(False, f"{self.probe.address}: {os.strerror(err).lower()}")
            return
        self._established()

    def _established(self) -> None:
        """Connected: a tcp check passes; an http check sends its GET and reads the reply."""
        assert self.sock is not None
        if self.probe.kind == "tcp":
            self._finish(True, "ok")
            return
        if self.timer is None:
            self.timer = self.loop.call_later(self.probe.timeout, self._timed_out)
        request = (f"GET {self.probe.path} HTTP/1.0\r\nHost: {self.probe.address}\r\n"
                   "User-Agent: orch-probe\r\nConnection: close\r\n\r\n").encode("latin-1")
        try:
            sent = self.sock.send(request)  # a few hundred bytes: a fresh socket's buffer takes them
        except OSError as exc:
            self._finish(False, f"{self.probe.address}: {exc.strerror or exc}")
            return
        if sent != len(request):
            self._finish(False, f"{self.probe.address}: could not send the request")
            return
        self.watching = 2
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(False, f"{self.probe.address}: {exc.strerror or exc}")
            return
        self.head += data
        line, newline, _ = self.head.partition(b"\n")
        if newline or not data:
            if not line:
                self._finish(False, f"connection closed without a response from {self.probe.path}")
            else:
                self._finish(*status_verdict(line.rstrip(b"\r"), self.probe.path, self.probe.status))
        elif len(self.head) > MAX_HEAD:
            self._finish(False, f"no HTTP status line from {self.probe.path}")

    def _timed_out(self) -> None:
        self.timer = None
        self._finish(False, f"timed out after {self.probe.timeout:g}s")

    def _finish(self, passed: bool, detail: str) -> None:
        if self.finished:
            return
        self._close()
        self.done(passed, detail)

    def _unwatch(self) -> None:
        if self.sock is not None and self.watching:
            (self.loop.remove_writer if self.watching == 1 else self.loop.remove_reader)(self.sock.fileno())
        self.watching = 0

    def _close(self) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._unwatch()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
