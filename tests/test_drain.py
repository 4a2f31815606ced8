"""Before an upgrade's exec (handover/drain.py): a listener that stops accepting leaves its
clients in the backlog, and a connection closed with unread input is ended with FIN, not RST
(acceptor.py). Real sockets in one process, no master."""

from __future__ import annotations

import contextlib
import socket
from typing import Callable, Iterator

import pytest

from orchestrator.acceptor import Acceptor, part
from orchestrator.loop import EventLoop


def _pair() -> tuple[socket.socket, socket.socket]:
    """(client, server's side) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        served, _ = listener.accept()
    return client, served


def _after_close(close) -> tuple[bytes, str | None]:
    """What a client reads when the server answers, then closes with the request unread."""
    client, served = _pair()
    try:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n" * 100)  # never read by the server
        served.sendall(b"the answer")
        close(served)
        got = b""
        try:
            while data := client.recv(65536):
                got += data
        except ConnectionResetError as exc:
            return got, type(exc).__name__
        return got, None
    finally:
        client.close()


def test_closing_with_unread_input_resets_and_part_does_not():
    assert _after_close(socket.socket.close)[1] == "ConnectionResetError", "the kernel no longer resets"
    assert _after_close(part) == (b"the answer", None)


@contextlib.contextmanager
def _acceptor(has_room=None) -> Iterator[tuple[Acceptor, Callable[[int], None], list, list]]:
    """A loopback listener behind an Acceptor on a fresh loop: (acceptor, turn(n) running n
    loop turns, the accepted sockets, the test's clients); all closed afterwards."""
    loop = EventLoop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    accepted: list[socket.socket] = []
    clients: list[socket.socket] = []
    extra = {} if has_room is None else {"has_room": has_room}
    acceptor = Acceptor(loop, listener, accepted.append, lambda: None, "test", **extra)

    def turn(n: int) -> None:
        for _ in range(n):
            loop.run_once(0.01)
    try:
        yield acceptor, turn, accepted, clients
    finally:
        for sock in clients + accepted:
            sock.close()
        acceptor.close()
        listener.close()
        loop.close()


def _connect(acceptor: Acceptor) -> socket.socket:
    return socket.create_connection(acceptor.sock.getsockname(), timeout=5)


def test_a_paused_acceptor_leaves_clients_in_the_backlog_until_unpaused():
    with _acceptor() as (acceptor, turn, accepted, clients):
        acceptor.pause()
        clients += [_connect(acceptor) for _ in range(3)]
        turn(5)
        assert accepted == [], "accepted while paused"
        acceptor.unpause()
        turn(5)
        assert len(accepted) == 3


@pytest.mark.parametrize("paused_first", [True, False])
def test_unpause_does_not_resume_a_listener_held_for_room(paused_first):
    """A listener held back by `has_room` stays held after unpause (and the other way round)."""
    room = [True]
    with _acceptor(has_room=lambda: room[0]) as (acceptor, turn, accepted, clients):
        room[0] = False
        clients.append(_connect(acceptor))
        if paused_first:
            acceptor.pause()
        turn(3)
        acceptor.pause()
        acceptor.unpause()
        turn(3)
        assert accepted == []
        room[0] = True
        acceptor.room_made()
        turn(3)
        assert len(accepted) == 1
