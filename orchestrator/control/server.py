"""The control socket: JSON lines over a Unix socket, owner-only, served inside the event loop
(the master's side; client.py is the CLI's).

Wire format (one JSON object per line, both ways):
  request  {"cmd": "status", "args": {...}}
  reply    {"ok": true, "result": ...}  or  {"ok": false, "error": "...", "code": 1}
A reply may carry raw bytes after its line: {"ok": true, "result": ..., "tail": N} then N
bytes (`orch status --json`'s text, sent as is rather than escaped inside the JSON).
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
from typing import TYPE_CHECKING, Any, Callable, Collection

from ..acceptor import REPORT_EVERY, Acceptor, Throttle, admission, connection_cap, part  # noqa: F401 - re-exported
from ..errors import OrchError
from .client import ControlError  # the client side lives in client.py

if TYPE_CHECKING:
    from ..loop import EventLoop, Timer

log = logging.getLogger("orch")
Handler = Callable[[str, dict[str, Any], "Connection"], Any]
# Requests are a command and a few patterns; at the connection cap this bounds what clients
# can make the master hold to 256 x 64 KiB (it was 1 MiB each: 256 MiB).
MAX_REQUEST = 1 << 16
# Same-uid clients must not take the fds instances need (pipes, logs, /proc fds): at most
# 256 connections, and never more than 1/8 of the soft fd limit. A new client at the cap
# closes the oldest idle one, so `orch status` gets in unless every one is owed an answer.
MAX_CONNECTIONS, FD_SHARE = 256, 8
IDLE_TIMEOUT = 60.0  # a connection that asked nothing for this long, and is owed nothing, is closed
# Out of fds, an idle connection silent this long gives its fd to the next client; a newer
# one is spared: it may be the client the last accept was for, about to send its request.
NO_FDS_SILENT = 1.0


class Tail:
    """A result with raw bytes to send after the reply's line (see the wire format)."""

    def __init__(self, result: Any, data: bytes) -> None:
        self.result, self.data = result, data


class Pending:
    """A reply a handler gives later: the connection stays open until `resolve` or `fail`
    (`orch stop` waiting for its instances to be gone)."""

    def __init__(self) -> None:
        self.conn: "Connection | None" = None
        self.answered = False
        self.request: tuple[str, dict[str, Any]] | None = None  # (cmd, args) that asked for it

    def resolve(self, result: Any) -> None:
        self._answer({"ok": True, "result": result})

    def fail(self, message: str, code: int = 1) -> None:
        self._answer({"ok": False, "error": message, "code": code})

    def _answer(self, message: dict[str, Any]) -> None:
        if not self.answered and self.conn is not None:
            self.answered = True
            self.conn.owed -= 1
            self.conn.last_active = self.conn.server.loop.time()
            self.conn.send(message)


class Connection:
    """One client connection with buffered, non-blocking reads and writes. One reply at a
    time: while a reply waits for the client to read it, further requests wait in the
    kernel's buffer, not in ours (a client that never reads cannot grow the master)."""

    def __init__(self, server: "ControlServer", sock: socket.socket):
        self.server = server
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.keep_open = False  # `down`: closes when the process exits
        self.closed = False
        self.owed = 0  # Pending replies not given yet
        self.drained: Callable[[], None] | None = None  # a stream's: called once the client read all
        self.stream: Any = None  # `orch events -f`: its EventFeed (event_feed.py)
        self.asked: list[Pending] = []  # the replies owed (an upgrade asks some again: handover/)
        self.last_active = server.loop.time()
        self._eof = False
        self._reading = False

    @property
    def idle(self) -> bool:
        """Nothing owed either way: closing it loses no answer."""
        return not (self.keep_open or self.owed or self.outbuf or self.closed)

    @property
    def carriable(self) -> bool:
        """An upgrade can hand it to the next master: owed no answer, not a stream (what it
        has not sent of an answer, and a request half-read, go with it: `carry_on`)."""
        return not (self.keep_open or self.owed or self.closed) and self.drained is None

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._eof = True
            if not self.keep_open:
                self.close()
            else:
                self.watch_reads()
            return
        self.last_active = self.server.loop.time()
        self.inbuf.extend(data)
        self._serve()

    def _serve(self) -> None:
        """Handle the complete requests buffered, until one leaves a reply unsent."""
        while b"\n" in self.inbuf and not self.outbuf and not self.closed:
            line, _, rest = bytes(self.inbuf).partition(b"\n")
            self.inbuf[:] = rest
            if line.strip():
                self._handle(line)
        if len(self.inbuf) > MAX_REQUEST and b"\n" not in self.inbuf:
            self.inbuf.clear()
            self.send({"ok": False, "error": "request too large", "code": 2})
        self.watch_reads()

    def watch_reads(self) -> None:
        """Read requests unless a reply is still being sent (or the client is gone)."""
        want = not (self.closed or self._eof or self.outbuf)
        if want != self._reading:
            self._reading = want
            if want:
                self.server.loop.add_reader(self.sock.fileno(), self.on_readable)
            else:
                self.server.loop.remove_reader(self.sock.fileno())

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
            self.owed += 1
            result.conn = self  # answered later, in the loop
            result.request = (cmd, args)
            self.asked = [p for p in self.asked if not p.answered] + [result]
            return
        if isinstance(result, Tail):
            self.send({"ok": True, "result": result.result, "tail": len(result.data)}, result.data)
            return
        self.send({"ok": True, "result": result})

    def owed_requests(self) -> list[tuple[str, dict[str, Any]]]:
        """The requests whose replies are still owed, oldest first."""
        return [p.request for p in self.asked if not p.answered and p.request is not None]

    def ask_again(self, requests: list[tuple[str, dict[str, Any]]]) -> None:
        """Handle requests a master before an upgrade had taken but not answered, as if just sent."""
        for cmd, args in requests:
            self._handle(json.dumps({"cmd": cmd, "args": args}).encode())

    def carry_on(self, unsent: bytes, unread: bytes) -> None:
        """Go on where the master before an upgrade left this connection: send what it had
        not sent, then serve what it had read (a request, whole or half)."""
        self.inbuf[:0] = unread
        self.resume_output(unsent)
        if not self.outbuf:
            self._serve()

    def send(self, message: dict[str, Any], tail: bytes = b"") -> None:
        if self.closed:
            return
        self.outbuf.extend(json.dumps(message, default=str).encode() + b"\n")
        self.outbuf.extend(tail)
        self._flush()
        self.watch_reads()

    def resume_output(self, data: bytes) -> None:
        """Send `data` first: what the master before an upgrade had not sent on this connection."""
        self.outbuf[:0] = data
        self._flush()
        self.watch_reads()

    def _flush(self) -> None:
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

    def on_writable(self) -> None:
        """The client read some of a reply: send more, then serve the requests that waited."""
        self._flush()
        if not self.closed and not self.outbuf:
            if self.drained is not None:
                self.drained()
            self._serve()

    def close(self, parting: bool = False) -> None:
        """`parting`: without a reset, though the client sent more (acceptor.part)."""
        if not self.closed:
            self.closed = True
            self.server.loop.remove_reader(self.sock.fileno())
            self.server.loop.remove_writer(self.sock.fileno())
            if parting:
                part(self.sock)
            else:
                self.sock.close()
            self.server.connections.discard(self)


class ControlServer:
    """Accepts clients of the same uid (or root) on an owner-only Unix socket, at most
    `connection_cap` at a time; idle ones time out."""

    def __init__(self, loop: EventLoop, path: Path, handler: Handler, sock: socket.socket | None = None):
        """`sock`: the listening socket a master handed over across exec (handover/), else bound at `path`."""
        self.loop = loop
        self.path = path
        self.handler = handler
        self.connections: set[Connection] = set()
        self._sweeper: Timer | None = None
        self._report = Throttle(REPORT_EVERY)
        self.sock = sock if sock is not None else bind_unix(path, socket.SOCK_STREAM)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.acceptor = Acceptor(loop, self.sock, self._client,
                                 lambda: self._free_one(silent_for=NO_FDS_SILENT), "control")

    def _client(self, client: socket.socket) -> None:
        uid = peer_uid(client)
        if uid not in (os.getuid(), 0):
            log.warning("control: refused a client with uid %s", uid)
            _refuse(client, "permission denied")
            return
        if not self._make_room():
            _refuse(client, "too many control connections, each waiting for an answer")
            return
        client.setblocking(False)
        conn = Connection(self, client)
        self.connections.add(conn)
        conn.watch_reads()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(IDLE_TIMEOUT / 4, self._sweep)

    def adopt(self, client: socket.socket) -> "Connection | None":
        """Serve a client connection handed over across exec (handover/), as if just accepted."""
        self._client(client)
        return next((c for c in self.connections if c.sock is client), None)

    def in_flight(self, keep: "Collection[Connection]" = ()) -> int:
        """Connections owed an answer or with a request half-read (streams and `keep` aside)."""
        return sum(1 for c in self.connections if c not in keep and c.drained is None and not c.carriable)

    def part(self, keep: "Collection[Connection]" = ()) -> None:
        """Close without a reset every connection an upgrade cannot carry, but those in `keep`."""
        for conn in [c for c in self.connections if c not in keep and not c.carriable]:
            conn.close(parting=True)

    def _make_room(self) -> bool:
        """Close the oldest idle connections while at the cap; False if none can go."""
        cap = connection_cap(MAX_CONNECTIONS, FD_SHARE)
        while True:
            verdict = admission(len(self.connections), cap, any(c.idle for c in self.connections))
            if verdict != "evict":
                return verdict == "accept"
            if self._report.due(self.loop.time()):
                log.warning("control: %d connections, the cap: closing the oldest idle ones", cap)
            self._free_one()

    def _free_one(self, silent_for: float = 0.0) -> None:
        """Close the idle connection that asked something longest ago, if silent for at
        least `silent_for` seconds (out of fds: its fd serves the next client)."""
        cutoff = self.loop.time() - silent_for
        idle = [c for c in self.connections if c.idle and c.last_active <= cutoff]
        if idle:
            min(idle, key=lambda c: c.last_active).close()

    def _sweep(self) -> None:
        """Close connections idle for IDLE_TIMEOUT; runs every quarter of it while any is open."""
        self._sweeper = None
        cutoff = self.loop.time() - IDLE_TIMEOUT
        for conn in [c for c in self.connections if c.idle and c.last_active <= cutoff]:
            conn.close()
        if self.connections:
            self._sweeper = self.loop.call_later(IDLE_TIMEOUT / 4, self._sweep)

    def close(self) -> None:
        self.acceptor.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        close_listener(self.loop, self.sock, self.path)


def _refuse(client: socket.socket, reason: str) -> None:
    """One error line (it fits any socket buffer, so this never blocks), then close."""
    try:
        client.setblocking(False)
        client.send(json.dumps({"ok": False, "error": reason, "code": 1}).encode() + b"\n")
    except OSError:
        pass
    finally:
        client.close()


def bind_unix(path: Path, kind: int) -> socket.socket:
    """An owner-only Unix socket bound at `path`, replacing a stale file (the pidfile lock
    proves no other master owns it)."""
    if len(str(path).encode()) > 107:  # the config allows 107 for the control socket; .notify adds 7
        raise OrchError(f"orchestrator.control_socket: cannot bind {path}: it is longer than the 107 "
                        "bytes a Unix socket path may have (the notify socket beside the control "
                        "socket adds .notify): choose a shorter control_socket")
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
