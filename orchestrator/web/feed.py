"""The dashboard's live feed: one server-sent events stream per open page.

A stream shows one page of the fleet (its offset, size and filter are in its URL; the page
opens a new stream when they change), so what a page costs the master does not grow with
the fleet: a state change is sent within FLUSH_DELAY, the page's CPU and memory every
USAGE_EVERY, and each message is the page's rows plus the fleet's counts by state; a row on
a page is also sent alone at each of its state changes, so a restart that passes through
"starting" in 40 ms still shows it.
Journal records go to every stream as they happen. A reader that falls behind never grows
the master: while its unread bytes pass MAX_BACKLOG, its page updates wait (the next one
replaces them) and its journal records are dropped and counted, then said in one message
as soon as it has read what waited (or with the next record, whichever comes first)."""

from __future__ import annotations

import fnmatch
import itertools
import json
import re
from collections import Counter
from operator import attrgetter
from typing import Any, Callable, Iterable

from ..loop import EventLoop, Timer
from ..supervise.events import StateChanged
from ..supervise.instance import sample_usage
from .http import Conn, response

FLUSH_DELAY = 0.1  # a state change reaches the open pages this soon
MIN_FLUSH = 0.25  # and a storm of them at most this often
USAGE_EVERY = 2.0  # seconds between two CPU/memory refreshes of a page
MIN_SAMPLE = 1.0  # seconds: an instance sampled more recently keeps its figures
PING_EVERY = 15.0  # a comment line keeps proxies and the browser from timing out
MAX_BACKLOG = 256 * 1024
MAX_PAGE = 500
MAX_STREAMS = 16  # open pages at once; the HTTP server's cap (64) leaves room for their requests
RECENT = 100  # journal records a new page starts with
_encode = json.JSONEncoder(separators=(",", ":")).encode
_state = attrgetter("state")


def page_filter(query: str, state: str) -> Callable[[Any], bool]:
    """The filter of a page, built once (pure): `query` a substring or glob of the name or
    template, `state` a state's value; either may be empty."""
    if any(c in query for c in "*?["):
        glob = re.compile(fnmatch.translate(query)).match
        text = lambda inst: bool(glob(inst.name) or glob(inst.spec.template))  # noqa: E731
    else:
        text = lambda inst: query in inst.name or query in inst.spec.template  # noqa: E731
    if not state:
        return text
    return lambda inst: inst.state.value == state and text(inst)


def matches(inst: Any, query: str, state: str) -> bool:
    """`inst` passes the filter of a page."""
    return page_filter(query, state)(inst)


def row(inst: Any) -> dict[str, Any]:
    """What the table shows of one instance."""
    alive = inst.pid is not None
    return {"name": inst.name, "template": inst.spec.template, "state": inst.state.value, "pid": inst.pid,
            "restarts": inst.restarts, "cpu": round(inst.cpu_percent, 1) if alive else None,
            "rss": inst.rss if alive else None, "uptime": round(inst.uptime()) if alive else None,
            "last_exit": inst.last_exit, "held": inst.held}


def refresh_usage(chosen: Iterable[Any], usage: Callable[[int], tuple[int, int, int]], now: float) -> None:
    """Fresh CPU and memory for these instances, skipping any sampled under MIN_SAMPLE ago
    (by anyone: orch status, top, metrics): a CPU % over a few milliseconds says nothing."""
    due = [i for i in chosen if i.pid is not None and (not i.cpu_sample or now - i.cpu_sample[0] >= MIN_SAMPLE)]
    if due:
        sample_usage(due, usage, now)


def event_bytes(name: str, data: str) -> bytes:
    """One server-sent event (`data` holds no newline: it is compact JSON)."""
    return f"event: {name}\ndata: {data}\n\n".encode()


class Stream:
    """One open page: its view of the fleet and what waits to be said to it."""

    __slots__ = ("conn", "offset", "limit", "query", "state", "keep", "visible", "shown", "sent", "dropped",
                 "stale", "seq")

    def __init__(self, conn: Conn, offset: int, limit: int, query: str, state: str):
        self.conn = conn
        self.offset, self.limit, self.query, self.state = offset, limit, query, state
        self.keep = page_filter(query, state)
        self.visible: list[Any] = []  # the Instances on its page, as last sent
        self.shown: set[int] = set()  # their ids
        self.sent = ""  # the last page message, to skip repeating it
        self.dropped = 0  # journal records not sent: it was behind
        self.stale = True  # a page update is owed
        self.seq = 0  # the last journal record it was given or counted as dropped

    def handover(self) -> dict[str, Any]:
        """What an upgrade carries of it: its page's query and where it stands in the journal."""
        return {"offset": self.offset, "limit": self.limit, "q": self.query, "state": self.state,
                "seq": self.seq, "dropped": self.dropped}

    @property
    def behind(self) -> bool:
        return self.conn.backlog > MAX_BACKLOG


class Feed:
    """Every open stream, fed from the supervisor's bus and the journal."""

    def __init__(self, loop: EventLoop, instances: Callable[[], dict[str, Any]],
                 usage: Callable[[int], tuple[int, int, int]], journal: Any = None):
        self.loop = loop
        self.instances = instances
        self.usage = usage
        self.journal = journal
        self.streams: list[Stream] = []
        self.messages = 0  # page messages sent (the bench reads it)
        self._flush_timer: Timer | None = None
        self._last_flush = -MIN_FLUSH
        self._usage_timer: Timer | None = None
        self._ping_timer: Timer | None = None
        self._unfollow: Callable[[], None] | None = None

    # --- streams ----------------------------------------------------------------
    def open(self, conn: Conn, query: dict[str, str]) -> None:
        """Turn `conn` into a stream of the page its query names (503 past MAX_STREAMS)."""
        if len(self.streams) >= MAX_STREAMS:
            conn.finish(response(503, b"too many open pages\n", headers=("Retry-After: 5",)))
            return
        stream = self._stream(conn, query, head=True)
        conn.send(b"retry: 2000\n\n")
        if self.journal is not None:
            stream.seq = self.journal.seq
            conn.send(event_bytes("journal", _encode(self.journal.recent(RECENT))))
        self._started(stream)

    def take_over(self, conn: Conn, saved: dict[str, Any]) -> None:
        """A page's stream the master before an upgrade had open, on its handed-over
        connection (whose unsent bytes go first): the journal records since the last one it
        was given (none lost or twice), then its page, then as `open` goes on."""
        stream = self._stream(conn, {k: str(v) for k, v in saved.items()}, head=False)
        stream.dropped = int(saved.get("dropped", 0))
        stream.seq = int(saved.get("seq", 0))
        missed = self.journal.recent(since_seq=stream.seq) if self.journal is not None else []
        if missed:
            stream.seq = missed[-1]["seq"]
            conn.send(event_bytes("journal", _encode(missed)))
        self._started(stream)

    def _stream(self, conn: Conn, query: dict[str, str], head: bool) -> Stream:
        stream = Stream(conn, _int(query.get("offset"), 0, 10**9), _int(query.get("limit"), 100, MAX_PAGE),
                        query.get("q", "")[:200], query.get("state", "")[:32])
        self.streams.append(stream)
        conn.stream(lambda: self._closed(stream), lambda: self._caught_up(stream), head)
        if self.journal is not None and self._unfollow is None:
            self._unfollow = self.journal.follow(self._record)
        return stream

    def _started(self, stream: Stream) -> None:
        self._refresh_usage([stream])
        self._send_page(stream)
        if self._usage_timer is None:
            self._usage_timer = self.loop.call_later(USAGE_EVERY, self._usage_tick)
            self._ping_timer = self.loop.call_later(PING_EVERY, self._ping)

    def _caught_up(self, stream: Stream) -> None:
        """Its reader read all that waited: what it missed is said now, not at the next record."""
        if stream.dropped:
            dropped, stream.dropped = stream.dropped, 0
            stream.conn.send(event_bytes("dropped", str(dropped)))
        if stream.stale:
            self._send_page(stream)

    def _closed(self, stream: Stream) -> None:
        self.streams.remove(stream)
        if not self.streams:  # nobody looks: no timers, no journal follower
            for timer in (self._usage_timer, self._ping_timer, self._flush_timer):
                if timer is not None:
                    timer.cancel()
            self._usage_timer = self._ping_timer = self._flush_timer = None
            if self._unfollow is not None:
                self._unfollow()
                self._unfollow = None

    # --- what happens -------------------------------------------------------------
    def on_event(self, event: object) -> None:
        """Bus subscriber: a state change makes every page owe an update (its counts changed)."""
        if isinstance(event, StateChanged) and self.streams:
            inst, data = event.instance, None
            for stream in list(self.streams):  # a send may close one
                stream.stale = True
                if id(inst) in stream.shown and not stream.behind:  # each step of it, at once
                    data = data or event_bytes("row", _encode(row(inst)))
                    stream.conn.send(data)
            self._flush_soon()

    def _record(self, record: dict[str, Any]) -> None:
        """Journal follower (in the loop: never blocks): to every stream that keeps up."""
        data = None
        for stream in list(self.streams):  # a send may close one
            stream.seq = record["seq"]
            if stream.behind:
                stream.dropped += 1
                continue
            if stream.dropped:
                stream.conn.send(event_bytes("dropped", str(stream.dropped)))
                stream.dropped = 0
            data = data or event_bytes("journal", _encode([record]))
            stream.conn.send(data)

    def _flush_soon(self) -> None:
        if self._flush_timer is None:
            due = max(FLUSH_DELAY, self._last_flush + MIN_FLUSH - self.loop.time())
            self._flush_timer = self.loop.call_later(due, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        self._last_flush = self.loop.time()
        for stream in list(self.streams):  # a send may close one
            if stream.stale:
                self._send_page(stream)

    def _usage_tick(self) -> None:
        self._usage_timer = self.loop.call_later(USAGE_EVERY, self._usage_tick)
        current = [s for s in self.streams if not s.behind]
        self._refresh_usage(current)
        for stream in current:
            self._send_page(stream)

    def _ping(self) -> None:
        self._ping_timer = self.loop.call_later(PING_EVERY, self._ping)
        for stream in list(self.streams):  # a send may close one
            if not stream.behind:
                stream.conn.send(b": ping\n\n")

    # --- pages --------------------------------------------------------------------
    def _refresh_usage(self, streams: Iterable[Stream]) -> None:
        """Fresh CPU and memory for the instances on these pages (each read once)."""
        chosen = {id(i): i for s in streams for i in s.visible}
        refresh_usage(chosen.values(), self.usage, self.loop.time())

    def page(self, stream: Stream) -> dict[str, Any]:
        """The page's message: its rows, how many match, and the fleet's counts by state."""
        fleet = self.instances()
        counts = {state.value: n for state, n in Counter(map(_state, fleet.values())).items()}
        if stream.query or stream.state:
            found = list(filter(stream.keep, fleet.values()))
            total, shown = len(found), found[stream.offset:stream.offset + stream.limit]
        else:
            total, shown = len(fleet), _slice(fleet.values(), stream.offset, stream.limit)
        fresh = [i for i in shown if id(i) not in stream.shown and i.pid is not None]
        stream.visible, stream.shown = shown, set(map(id, shown))
        refresh_usage(fresh, self.usage, self.loop.time())  # new on the page: now, not at the next tick
        return {"offset": stream.offset, "limit": stream.limit, "total": total, "fleet": len(fleet),
                "counts": counts, "rows": [row(i) for i in shown]}

    def _send_page(self, stream: Stream) -> None:
        if stream.behind:
            return  # still stale: sent once it has read
        text = _encode(self.page(stream))
        stream.stale = False
        if text != stream.sent:
            stream.sent = text
            stream.conn.send(event_bytes("page", text))
            self.messages += 1

    def close(self) -> None:
        for stream in list(self.streams):
            stream.conn.close()


def _slice(values: Iterable[Any], offset: int, limit: int) -> list[Any]:
    return list(itertools.islice(values, offset, offset + limit))


def _int(text: str | None, default: int, top: int) -> int:
    try:
        return max(0, min(top, int(text))) if text is not None else default
    except ValueError:
        return default
