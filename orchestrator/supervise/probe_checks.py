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

    def start(self) -> None:
        """Connect; on loopback the kernel usually completes the handshake inside connect(2),
        so a second connect_ex tells at once (0 or EISCONN: connected; an error: refused) and
        a tcp check then ends here, with no timer and no epoll registration. Only a connect
        still under way (EALREADY) is watched, with the timeout. Measured (bench/RESULTS.md,
        probes-idle): the watched round trip was about a third of orch's own cost per check."""
        probe = self.probe
        try:
            sock = self.sock = raw_socket(_FAMILY[":" in probe.host], _SOCK_TYPE)
            err = sock.connect_ex((probe.host, probe.port))
            if err == errno.EINPROGRESS:
                err = sock.connect_ex((probe.host, probe.port))
        except OSError as exc:
            self._finish(False, f"cannot connect to {probe.address}: {exc.strerror or exc}")
            return
        if err == 0 or err == errno.EISCONN:
            self._established()
        elif err == errno.EALREADY or err == errno.EINPROGRESS:
            self.timer = self.loop.call_later(probe.timeout, self._timed_out)
            self.watching = 1
            self.loop.add_writer(sock.fileno(), self._connected)
        else:
            self._finish(False, f"{probe.address}: {os.strerror(err).lower()}")

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
