"""The last step before an upgrade's exec: the master's servers (control socket, metrics
endpoint, dashboard) stop accepting, answer what they had accepted, and close the rest
without a reset.

exec closes every fd that is not handed over. A connection the old master had accepted but
not answered would go with it, and closing a socket with unread bytes makes the kernel send
RST: the client saw "connection reset" (CI found it with dashboard requests across an
upgrade). So:
- the listening sockets stop being accepted from: newcomers wait in the kernel's listen
  backlog, which crosses exec with the socket, for the new master;
- what was accepted gets its answer, for DRAIN seconds at most (an answer takes
  milliseconds; only a client that connected and sends nothing is waited out);
- what is left (a client still silent after DRAIN) is closed with FIN after its queued
  bytes, its unread input read and dropped (acceptor.part), never with RST. Control
  clients owed nothing (idle, or with a request half-read or an answer half-sent), those
  of commands waiting on instances (`orch restart` until ready), `orch events -f` streams,
  `orch diff` and `orch reload` owed answers (asked again by the next master) and every
  dashboard connection (pages' streams, a request still arriving, an answer still being
  sent) are not closed: they cross exec.
"""

from __future__ import annotations

from typing import Any, Callable, Collection

DRAIN = 1.0  # seconds accepted connections get to be answered before the exec


class Drain:
    """Pauses the servers of `master` and counts what they still owe; `kept` says which
    control connections owed an answer cross exec (the one that asked for the upgrade, those
    of commands waiting on instances): the next master answers them."""

    def __init__(self, master: Any, kept: Callable[[], Collection[Any]]):
        self.kept = kept
        self.control = master.control
        self.http = [master.metrics] if master.metrics is not None else []
        # the dashboard's connections all cross exec (capture.py): paused, never waited for
        self.carried = [master.dashboard.server] if master.dashboard is not None else []

    def _acceptors(self) -> list[Any]:
        servers = [self.control, *self.http] if self.control is not None else self.http
        return [server.acceptor for server in [*servers, *self.carried]]

    def pause(self) -> None:
        for acceptor in self._acceptors():
            acceptor.pause()

    def unpause(self) -> None:
        """The upgrade did not happen: accept again."""
        for acceptor in self._acceptors():
            acceptor.unpause()

    def in_flight(self) -> int:
        """Accepted connections still owed an answer (streams never end: not counted)."""
        owed = sum(server.in_flight() for server in self.http)
        return owed + (self.control.in_flight(self.kept()) if self.control is not None else 0)

    def part(self) -> None:
        """Close, without a reset, every connection the exec would not hand over."""
        for server in self.http:
            server.part()
        if self.control is not None:
            self.control.part(self.kept())
