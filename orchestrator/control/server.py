"""The control socket: JSON lines over a Unix socket, owner-only, served inside the event loop
(the master's side; client.py is the CLI's).

Wire format (one JSON object per line, both ways):
  request  {"cmd": "status", "args": {...}}
  reply    {"ok": true, "result": ...}  or  {"ok": false, "error": "...", "code": 1}
A connection may carry several requests. After `down` the master keeps the connection
open and the client sees EOF only when the master process has exited.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .client import ControlError  # the client side lives in client.py

if TYPE_CHECKING:
    from ..loop import EventLoop

log = logging.getLogger("orch")
Handler = Callable[[str, dict[str, Any], "Connection"], Any]
MAX_REQUEST = 1 << 20


class Pending:
    """A reply a handler gives later: the connection stays open until `resolve` or `fail`
    (`orch stop` waiting for its instances to be gone)."""

    def __init__(self) -> None:
        self.conn: "Connection | None" = None
        self.answered = False

    def resolve(self, result: Any) -> None:
        self._answer({"ok": True, "result": result})

    def fail(self, message: str, code: int = 1) -> None:
        self._answer({"ok": False, "error": message, "code": code})

    def _answer(self, message: dict[str, Any]) -> None:
        if not self.answered and self.conn is not None:
            self.answered = True
            self.conn.send(message)


class Connection:
    """One client connection with buffered, non-blocking reads and writes."""

    def __init__(self, server: "ControlServer", sock: socket.socket):
        self.server = server
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.keep_open = False  # `down`: closes when the process exits
        self.closed = False

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if not self.keep_open:
                self.close()
            else:
                self.server.loop.remove_reader(self.sock.fileno())
            return
        self.inbuf.extend(data)
        if len(self.inbuf) > MAX_REQUEST:
            self.send({"ok": False, "error": "request too large", "code": 2})
            self.inbuf.clear()
            return
        while b"\n" in self.inbuf:
            line, _, rest = bytes(self.inbuf).partition(b"\n")
            self.inbuf[:] = rest
            if line.strip():
                self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            cmd = request["cmd"]
            args = request.get("args") or {}
            if not isinstance(cmd, str) or not isinstance(args, dict):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            self.send({"ok": False, "error": "malformed request: expected {\"cmd\": ..., \"args\": {...}}",
                       "code": 2})
            return
        try:
            result = self.server.handler(cmd, args, self)
        except ControlError as exc:
            self.send({"ok": False, "error": str(exc), "code": exc.code})
            return
        except Exception as exc:  # noqa: BLE001 - a bad request must never take the master down
            log.exception("control command %r failed", cmd)
            self.send({"ok": False, "error": f"internal error: {exc}", "code": 1})
            return
        if isinstance(result, Pending):
            result.conn = self  # answered later, in the loop
            return
        self.send({"ok": True, "result": result})

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self.outbuf.extend(json.dumps(message, default=str).encode() + b"\n")
        self.on_writable()

    def on_writable(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
            del self.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close()
            return
        if self.outbuf:
            self.server.loop.add_writer(self.sock.fileno(), self.on_writable)
        else:
            self.server.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.loop.remove_reader(self.sock.fileno())
            self.server.loop.remove_writer(self.sock.fileno())
            self.sock.close()
            self.server.connections.discard(self)


class ControlServer:
    """Accepts clients of the same uid (or root) on an owner-only Unix socket."""

    def __init__(self, loop: EventLoop, path: Path, handler: Handler):
        self.loop = loop
        self.path = path
        self.handler = handler
        self.connections: set[Connection] = set()
        self.sock = bind_unix(path, socket.SOCK_STREAM)
        self.sock.listen(128)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uid = peer_uid(client)
            if uid not in (os.getuid(), 0):
                log.warning("control: refused a client with uid %s", uid)
                try:
                    client.send(b'{"ok": false, "error": "permission denied", "code": 1}\n')
                finally:
                    client.close()
                continue
            client.setblocking(False)
            conn = Connection(self, client)
            self.connections.add(conn)
            self.loop.add_reader(client.fileno(), conn.on_readable)

    def close(self) -> None:
        close_listener(self.loop, self.sock, self.path)


def bind_unix(path: Path, kind: int) -> socket.socket:
    """An owner-only Unix socket bound at `path`, replacing a stale file (the pidfile lock
    proves no other master owns it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket() or path.exists():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, kind)
    old_umask = os.umask(0o177)  # never visible with wider permissions, not even briefly
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return sock


def close_listener(loop: EventLoop, sock: socket.socket, path: Path) -> None:
    """Stop serving a Unix socket and remove its file."""
    loop.remove_reader(sock.fileno())
    sock.close()
    try:
        path.unlink()
    except OSError:
        pass


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]
