"""A small HTTP/1.1 server for the dashboard, in the master's loop: non-blocking sockets,
one request per connection (`Connection: close`), and long-lived streams for server-sent
events. Nothing here waits: a slow client's bytes wait in its own buffer, which the caller
bounds (`Conn.backlog`), and every connection has a deadline until it streams.

Accepting is bounded as for the control socket and the metrics endpoint (acceptor.py): at
most MAX_CONNECTIONS at a time, never more than 1/FD_SHARE of the fd limit; more wait in
the listen backlog, and a newcomer at the cap closes the oldest one still sending its request."""

from __future__ import annotations

import socket
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from ..acceptor import Admission, part
from ..errors import OrchError
from ..loop import EventLoop, Timer

MAX_HEAD = 16384  # request line and headers
MAX_BODY = 4096  # actions carry no body worth more
REQUEST_TIMEOUT = 10.0  # to send a whole request
SEND_TIMEOUT = 30.0  # to read a whole (non-stream) answer
MAX_CONNECTIONS, FD_SHARE = 64, 32
IDLE_AFTER = 1.0
STREAM_SNDBUF = 32 * 1024  # a stream's kernel send buffer (Linux doubles it); the rest waits in Conn.out
REASONS = {200: "OK", 204: "No Content", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
# Every answer: never cached (the token may be in a URL), never framed, never sniffed, and
# scripts only from this origin.
COMMON_HEADERS = ("Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"
                  "Referrer-Policy: no-referrer\r\nContent-Security-Policy: default-src 'self'; "
                  "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'\r\n")


class BadRequest(Exception):
    """The bytes are not a request this server takes (answered 400 or 413)."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


class Request:
    """One parsed request: method, path (decoded), query (first values), lowercased headers."""

    __slots__ = ("method", "path", "query", "headers", "body")

    def __init__(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes):
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body


def parse_request(data: bytes | bytearray) -> Request | None:
    """The request in `data`, or None while it is incomplete (pure); BadRequest if it is not one."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise BadRequest(413, "request head too large")
        return None
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(400, "HTTP/1.x only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequest(400, "chunked requests are not taken")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise BadRequest(413, "body too large")
    if len(data) < end + 4 + length:
        return None
    parts = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return Request(method.upper(), unquote(parts.path), query, headers, bytes(data[end + 4:end + 4 + length]))


def response(status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
             headers: tuple[str, ...] = ()) -> bytes:
    """A whole answer (pure)."""
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(head) + "\r\n" + COMMON_HEADERS + "\r\n").encode() + body


def stream_head() -> bytes:
    """The head of a server-sent events answer (its body never ends)."""
    return ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nConnection: close\r\n"
            + COMMON_HEADERS + "\r\n").encode()


class Conn:
    """One client connection: its request as it arrives, then what is left to send."""

    __slots__ = ("server", "sock", "opened", "inbuf", "out", "timer", "streaming", "closed",
                 "on_close", "on_drained", "request")

    def __init__(self, server: "HttpServer", sock: socket.socket, opened: float):
        self.server = server
        self.sock = sock
        self.opened = opened
        self.inbuf: bytearray | None = bytearray()  # None once the request is whole
        self.out = bytearray()
        self.timer: Timer | None = None
        self.streaming = False
        self.closed = False
        self.on_close: Callable[[], None] | None = None
        self.on_drained: Callable[[], None] | None = None  # a stream's reader has read all it was sent
        self.request: Request | None = None

    @property
    def backlog(self) -> int:
        """Bytes waiting for the client to read them."""
        return len(self.out)

    def send(self, data: bytes) -> None:
        """Queue `data` and send what the socket takes now."""
        if self.closed:
            return
        was_empty = not self.out
        self.out += data
        if was_empty:
            self.server._write(self)

    def finish(self, data: bytes) -> None:
        """Send a whole answer, then close."""
        self.streaming = False
        self.server._arm(self, SEND_TIMEOUT)
        self.send(data)

    def stream(self, on_close: Callable[[], None], on_drained: Callable[[], None] | None = None,
               head: bool = True) -> None:
        """Turn into an event stream: no deadline; `on_close` when the client leaves,
        `on_drained` each time it has read everything that waited for it; `head`: send the
        answer's head (not on a stream an upgraded master goes on with)."""
        self.streaming = True
        self.on_close = on_close
        self.on_drained = on_drained
        try:  # the kernel's share of a stuck reader is bounded too (it grew to 2 MiB a page)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        except OSError:
            pass
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if head:
            self.send(stream_head())

    def close(self) -> None:
        self.server._close(self)


class HttpServer:
    """Listens on `address` and hands every whole request to `handle(request, conn)`."""

    def __init__(self, loop: EventLoop, address: tuple[str, int], handle: Callable[[Request, Conn], None],
                 what: str = "http", sock: socket.socket | None = None):
        """`sock`: the listening socket a master handed over across exec (handover/), else bound."""
        host, port = address
        self.loop = loop
        self.handle = handle
        self.what = what
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            self.sock = sock or socket.create_server((host, port), family=family, reuse_port=False)
        except OSError as exc:
            raise OrchError(f"orchestrator.http: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self.conns: dict[socket.socket, Conn] = {}  # oldest first
        self.dropped = 0
        self.admission = Admission(loop, self.conns, lambda c: c.inbuf is not None,
                                   lambda c: self._close(c, timed_out=True), what,
                                   MAX_CONNECTIONS, FD_SHARE, IDLE_AFTER)
        self.acceptor = self.admission.accept(self.sock, self._client)

    def _client(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        conn = Conn(self, sock, self.loop.time())
        self.conns[sock] = conn
        self._arm(conn, REQUEST_TIMEOUT)
        self._read(conn)

    def _arm(self, conn: Conn, seconds: float) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer = self.loop.call_later(seconds, lambda: self._close(conn, timed_out=True))

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            self.loop.add_reader(conn.sock.fileno(), lambda: self._read(conn))
            return
        except OSError:
            data = b""
        if not data:  # EOF: a stream's reader left, or a client gave up
            self._close(conn)
            return
        if conn.inbuf is None:  # bytes after the request: ignored (one request per connection)
            return
        conn.inbuf += data
        try:
            request = parse_request(conn.inbuf)
        except BadRequest as exc:
            conn.inbuf = None
            conn.finish(response(exc.status, f"{exc}\n".encode()))
            return
        if request is None:
            self.loop.add_reader(conn.sock.fileno(), lambda: self._read(conn))
            return
        conn.inbuf = None
        conn.request = request
        # keep reading: EOF tells a stream its reader left; later bytes are dropped
        self.loop.add_reader(conn.sock.fileno(), lambda: self._read(conn))
        self.handle(request, conn)

    def _write(self, conn: Conn, waited: bool = False) -> None:
        """Send what the socket takes now; the rest when it is writable (then `waited`)."""
        if conn.closed:
            return
        try:
            sent = conn.sock.send(conn.out)
            del conn.out[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if conn.out:
            self.loop.add_writer(conn.sock.fileno(), lambda: self._write(conn, waited=True))
            return
        self.loop.remove_writer(conn.sock.fileno())
        if conn.streaming:
            if waited and conn.on_drained is not None:  # it caught up: tell the stream once
                conn.on_drained()
        elif conn.inbuf is None:  # a whole answer sent
            self._close(conn)

    def handover(self) -> list[dict[str, object]]:
        """Every connection as an upgrade carries it (nothing changes here): its socket, the
        request read so far (None once whole) and the bytes not sent yet."""
        return [{"sock": conn.sock, "inbuf": None if conn.inbuf is None else conn.inbuf.decode("latin-1"),
                 "out": conn.out.decode("latin-1"), "streaming": conn.streaming}
                for conn in self.conns.values() if not conn.closed]

    def adopt(self, sock: socket.socket, inbuf: str | None, out: str) -> Conn:
        """A connection the master before an upgrade had accepted, served on as it stood:
        its request read on, or its answer sent on (a stream is then taken over by the caller)."""
        sock.setblocking(False)
        conn = Conn(self, sock, self.loop.time())
        self.conns[sock] = conn
        conn.out += out.encode("latin-1")
        if inbuf is not None:
            conn.inbuf = bytearray(inbuf.encode("latin-1"))
            self._arm(conn, REQUEST_TIMEOUT)
            self._read(conn)
            return conn
        conn.inbuf = None
        self._arm(conn, SEND_TIMEOUT)  # a stream's take-over cancels it
        self.loop.add_reader(sock.fileno(), lambda: self._read(conn))  # EOF: its reader left
        self.loop.call_soon(lambda: self._write(conn, waited=True))  # once a stream is taken over
        return conn

    def in_flight(self) -> int:
        """Connections still owed an answer (a stream never ends, so it is not one)."""
        return sum(1 for conn in self.conns.values() if not conn.streaming)

    def part(self) -> None:
        """Close every connection without a reset (an upgrade's exec would close them with
        unread bytes): a stream's page sees its end and connects again."""
        for conn in list(self.conns.values()):
            self._close(conn, parting=True)

    def _close(self, conn: Conn, timed_out: bool = False, parting: bool = False) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.sock, None)
        self.dropped += timed_out
        if conn.timer is not None:
            conn.timer.cancel()
        self.loop.remove_reader(conn.sock.fileno())
        self.loop.remove_writer(conn.sock.fileno())
        if parting:
            part(conn.sock)
        else:
            conn.sock.close()
        if conn.on_close is not None:
            conn.on_close()
        self.acceptor.room_made()

    def close(self) -> None:
        self.admission.close()
        for conn in list(self.conns.values()):
            self._close(conn)
        self.sock.close()
