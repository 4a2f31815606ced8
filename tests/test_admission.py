"""acceptor.Admission, the one cap-and-evict rule of the metrics endpoint and the dashboard:
real listening sockets and a real event loop on a clock the test moves. At the cap a
newcomer waits in the listen backlog while every held connection is younger than
IDLE_AFTER, and gets in as soon as the oldest one still sending its request turns idle,
which is then closed for it."""

from __future__ import annotations

import socket
from typing import Any, Callable

import pytest

from orchestrator.loop import EventLoop
from orchestrator.observe import metrics
from orchestrator.web import http


def closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def metrics_server(loop: EventLoop) -> Any:
    return metrics.MetricsServer(loop, "127.0.0.1:0", lambda: "")


def dashboard_server(loop: EventLoop) -> Any:
    return http.HttpServer(loop, ("127.0.0.1", 0), lambda request, conn: conn.finish(http.response(200)))


@pytest.mark.parametrize("module, make, held", [(metrics, metrics_server, "scrapes"),
                                                (http, dashboard_server, "conns")])
def test_at_the_cap_a_newcomer_waits_until_the_oldest_request_is_idle_then_takes_its_place(
        monkeypatch, module: Any, make: Callable[[EventLoop], Any], held: str) -> None:
    monkeypatch.setattr(module, "MAX_CONNECTIONS", 2)
    now = [100.0]
    loop = EventLoop(clock=lambda: now[0])
    server = make(loop)
    clients: list[socket.socket] = []

    def connect(at: float) -> socket.socket:
        now[0] = at
        sock = socket.create_connection(server.sock.getsockname()[:2], timeout=5)
        clients.append(sock)
        for _ in range(5):
            loop.run_once(0.02)
        return sock

    try:
        a = connect(100.0)  # connects and never sends its request
        b = connect(100.5)
        c = connect(100.6)  # at the cap, and nobody idle for IDLE_AFTER (1 s) yet: the backlog
        assert len(getattr(server, held)) == 2 and not closed(a) and not closed(b) and server.dropped == 0
        now[0] = 101.1  # a has been sending for 1.1 s: the recheck timer lets c in, in a's place
        for _ in range(5):
            loop.run_once(0.02)
        assert closed(a) and not closed(b) and not closed(c), "a, idle, should have made room for c"
        assert len(getattr(server, held)) == 2 and server.dropped == 1
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and c is served
        for _ in range(5):
            now[0] += metrics.RENDER_EVERY
            loop.run_once(0.02)
        c.settimeout(5)
        assert c.recv(4096).startswith(b"HTTP/1."), "the newcomer got no answer"
    finally:
        for sock in clients:
            sock.close()
        server.close()
        loop.close()
