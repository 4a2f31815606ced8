"""A small prefork HTTP worker (stdlib only) for orch's shared listening sockets.

    python -m orchestrator.demo.web                # the socket orch passed (LISTEN_FDS, fd 3)
    python -m orchestrator.demo.web --fd 4          # a given inherited fd
    python -m orchestrator.demo.web --bind 127.0.0.1:8000 --reuseport   # its own socket

Every request gets `200 OK` and "ok NAME PID". One process, one selector loop, HTTP/1.1
keep-alive. On SIGTERM (or after ORCH_MAX_REQUESTS requests) it drains: it stops accepting
at once (the listening socket stays open in the master, so new connections queue for the
other workers), answers the request each open connection is sending or sends next with
`Connection: close`, closes idle ones after a short grace, and exits 0. A demo: request
bodies are read by Content-Length only (no chunked uploads).
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import time

from ..worker.runtime import listen_sockets, notify

IDLE_GRACE = 1.0      # while draining: how long an idle keep-alive connection may still send
DRAIN_TIMEOUT = 8.0   # while draining: the most time given to connections in flight
ACCEPT_BATCH = 1      # accepts per wake-up: one, so a burst of connections spreads over the workers


class Connection:
    """One client connection: bytes in, whole requests out."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.last = time.monotonic()

    def requests(self) -> list[bool]:
        """Complete requests in the buffer, as "keep alive after it?" flags."""
        found = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return found
            head = self.buffer[:end].decode("latin-1").lower()
            length = 0
            for line in head.split("\r\n")[1:]:
                key, _, value = line.partition(":")
                if key.strip() == "content-length" and value.strip().isdigit():
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return found
            self.buffer = self.buffer[end + 4 + length:]
            close = "connection: close" in head or (head.split("\r\n")[0].endswith("http/1.0")
                                                     and "keep-alive" not in head)
            found.append(not close)


class Server:
    """The selector loop of one worker process."""

    def __init__(self, listener: socket.socket, name: str, max_requests: int):
        self.listener = listener
        self.body = f"ok {name} {os.getpid()}\n".encode()
        self.max_requests = max_requests
        self.handled = 0
        self.draining_since: float | None = None
        self.conns: dict[int, Connection] = {}
        self.selector = selectors.DefaultSelector()
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)

    def drain(self) -> None:
        """Stop accepting; the connections in flight are finished by the loop."""
        if self.draining_since is None:
            self.draining_since = time.monotonic()
            self.selector.unregister(self.listener)
            notify("STOPPING=1")

    def run(self) -> None:
        while self.draining_since is None or self.conns:
            now = time.monotonic()
            if self.draining_since is not None:
                if now - self.draining_since > DRAIN_TIMEOUT:
                    break
                for conn in [c for c in self.conns.values() if now - c.last > IDLE_GRACE and not c.buffer]:
                    self._close(conn)
            for key, _ in self.selector.select(0.1 if self.draining_since is not None else 0.25):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)

    def _accept(self) -> None:
        if self.draining_since is not None:  # SIGTERM arrived after select() returned
            return
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNABORTED and friends: the client gave up; not ours to fail
                continue
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock)
            self.conns[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.buffer += data
        conn.last = time.monotonic()
        for keep_alive in conn.requests():
            self.handled += 1
            if self.max_requests and self.handled >= self.max_requests and self.draining_since is None:
                notify("ORCH_LIMIT=max_requests")
                self.drain()
            keep_alive = keep_alive and self.draining_since is None
            if not self._respond(conn, keep_alive) or not keep_alive:
                self._close(conn)
                return

    def _respond(self, conn: Connection, keep_alive: bool) -> bool:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(self.body)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode()
        data = head + self.body
        try:
            sent = conn.sock.send(data)
            if sent < len(data):  # rare for a small response: finish it blocking
                conn.sock.setblocking(True)
                conn.sock.sendall(data[sent:])
                conn.sock.setblocking(False)
            return True
        except OSError:
            return False

    def _close(self, conn: Connection) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        self.selector.unregister(conn.sock)
        conn.sock.close()


def _listener(args: argparse.Namespace) -> socket.socket:
    if args.bind:
        host, _, port = args.bind.rpartition(":")
        family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if args.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), int(port)))
        sock.listen(1024)
        return sock
    if args.fd is not None:
        return socket.socket(fileno=args.fd)
    passed = listen_sockets()
    if not passed:
        raise SystemExit("web: no socket: run under orch with sockets = [...], or give --fd or --bind")
    return passed[args.socket] if args.socket else next(iter(passed.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo.web")
    parser.add_argument("--fd", type=int, help="an inherited listening socket's fd")
    parser.add_argument("--socket", help="the name of a passed socket (LISTEN_FDNAMES)")
    parser.add_argument("--bind", help="bind HOST:PORT itself instead")
    parser.add_argument("--reuseport", action="store_true", help="with --bind: SO_REUSEPORT")
    args = parser.parse_args(argv)
    server = Server(_listener(args), os.environ.get("ORCH_INSTANCE", "web"),
                    int(os.environ.get("ORCH_MAX_REQUESTS") or 0))
    signal.signal(signal.SIGTERM, lambda *_: server.drain())
    signal.signal(signal.SIGINT, lambda *_: server.drain())
    notify("READY=1")
    server.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
