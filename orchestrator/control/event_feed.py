"""`orch events`: the journal's records for one control connection, as history and, with
`-f`, as a stream that never slows the master.

After the reply with the history, each new record that matches goes out as one line
`{"event": RECORD}`. A client that reads slower than events come keeps at most
STREAM_BUFFER bytes in the master: records past that are counted, not queued, and once
the client has read what was buffered it gets one line `{"dropped": N}`.
"""

from __future__ import annotations

import fnmatch
import socket
from typing import Any, Callable, Iterable

from ..supervise.journal import Journal, Record
from .server import Connection

STREAM_BUFFER = 64 * 1024  # bytes a following client may leave unread before records are dropped
KERNEL_BUFFER = 32 * 1024


def record_matcher(patterns: Iterable[str]) -> Callable[[Record], bool] | None:
    """A predicate for records about instances named by NAME, a glob or template:T; None
    (everything) without patterns. Fleet-wide records (reload, spawner_replaced) have no
    instance, so a pattern leaves them out."""
    names: list[str] = []
    templates: list[str] = []
    for pattern in patterns:
        (templates if pattern.startswith("template:") else names).append(pattern.removeprefix("template:"))
    if not names and not templates:
        return None

    def matches(rec: Record) -> bool:
        inst, template = rec.get("instance"), rec.get("template")
        return (inst is not None and any(fnmatch.fnmatchcase(inst, p) for p in names)) or \
            (template is not None and any(fnmatch.fnmatchcase(template, p) for p in templates))
    return matches


def unmatched(patterns: Iterable[str], instances: dict[str, Any], history: list[Record]) -> str | None:
    """The first pattern that names no current instance and no instance in the history."""
    known = {name: inst.spec.template for name, inst in instances.items()}
    known.update({r["instance"]: r["template"] for r in history if r.get("instance")})
    for pattern in patterns:
        test = record_matcher([pattern])
        assert test is not None
        if not any(test({"instance": n, "template": t}) for n, t in known.items()) and \
                not any(test(r) for r in history):
            return pattern
    return None


class EventFeed:
    """Hands new matching records to one connection, within its buffer, until it closes."""

    def __init__(self, conn: Connection, journal: Journal, matches: Callable[[Record], bool] | None,
                 limit: int = STREAM_BUFFER, patterns: Iterable[str] = ()) -> None:
        self.conn = conn
        self.matches = matches
        self.patterns = list(patterns)  # what `matches` was made from (an upgrade carries them)
        self.seq = journal.seq  # the last record this feed has seen, sent or not
        self.limit = limit
        self.dropped = 0
        self.sent = 0
        self._stop = journal.follow(self.on_record)
        conn.drained = self.on_drained
        conn.stream = self
        try:  # the kernel's share of a stuck follower is bounded too (Linux doubles it: 64 KiB)
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
        except OSError:
            pass

    def on_record(self, rec: Record) -> None:
        if self.conn.closed:
            self._stop()
            return
        self.seq = rec["seq"]
        if self.matches is not None and not self.matches(rec):
            return
        if len(self.conn.outbuf) >= self.limit:
            self.dropped += 1  # the client is behind: count, never queue (the master must not grow)
            return
        self._say_dropped()
        self.sent += 1
        self.conn.send({"event": rec})

    def handover(self) -> dict[str, Any]:
        """What `orch upgrade` carries of this stream: its patterns, where it stands in the
        journal (which the next master keeps), and the bytes not sent yet."""
        return {"patterns": self.patterns, "seq": self.seq, "dropped": self.dropped,
                "unsent": self.conn.outbuf.decode("latin-1")}

    @classmethod
    def take_over(cls, conn: Connection, journal: Journal, saved: dict[str, Any]) -> "EventFeed":
        """The stream of the master before an upgrade, on its handed-over connection: the
        bytes it had not sent, then the records since, then each new one (none lost or twice)."""
        conn.owed += 1  # a stream, as cmd_events makes it
        feed = cls(conn, journal, record_matcher(saved["patterns"]), patterns=saved["patterns"])
        feed.dropped = saved["dropped"]
        conn.resume_output(saved["unsent"].encode("latin-1"))
        for rec in journal.recent(since_seq=saved["seq"]):
            feed.on_record(rec)
        return feed

    def on_drained(self) -> None:
        """The client read everything buffered: tell it now how much it missed."""
        if self.dropped and not self.conn.closed:
            self._say_dropped()

    def _say_dropped(self) -> None:
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self.conn.send({"dropped": dropped})
