"""The dashboard's pure parts, table by table: request parsing, the token and origin checks,
the token file, the sample rings and the page filter (no master, milliseconds)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.errors import OrchError
from orchestrator.web import auth
from orchestrator.web.feed import matches
from orchestrator.web.history import SLOTS, Ring
from orchestrator.web.http import BadRequest, parse_request


def test_a_request_is_parsed_once_whole():
    assert parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    req = parse_request(b"GET /api/log?name=w%2D1&lines=5 HTTP/1.1\r\nHost: a:1\r\nX-Y:  z \r\n\r\n")
    assert (req.method, req.path, req.query, req.headers) == (
        "GET", "/api/log", {"name": "w-1", "lines": "5"}, {"host": "a:1", "x-y": "z"})
    assert parse_request(b"POST /api/stop HTTP/1.1\r\nContent-Length: 4\r\n\r\nab") is None
    assert parse_request(b"POST /api/stop HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd").body == b"abcd"


@pytest.mark.parametrize("raw,status", [
    (b"GET /\r\n\r\n", 400), (b"GET / SPDY/3\r\n\r\n", 400), (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000, 413)])
def test_what_is_not_a_request_is_refused(raw, status):
    with pytest.raises(BadRequest) as caught:
        parse_request(raw)
    assert caught.value.status == status


TOKEN = "t" * 43


@pytest.mark.parametrize("headers,ok", [
    ({}, False), ({"authorization": f"Bearer {TOKEN}"}, True), ({"authorization": f"bearer {TOKEN}"}, True),
    ({"authorization": f"Basic {TOKEN}"}, False), ({"authorization": "Bearer " + TOKEN[:-1]}, False),
    ({"cookie": f"a=b; orch_token_9200={TOKEN}"}, True), ({"cookie": f"orch_token_9201={TOKEN}"}, False),
    ({"cookie": "orch_token_9200="}, False), ({"authorization": "Bearer \u00e9"}, False)])
def test_the_token_is_a_bearer_header_or_this_ports_cookie(headers, ok):
    assert auth.authorized(headers, TOKEN, 9200) is ok


@pytest.mark.parametrize("headers,cross", [
    ({}, False), ({"origin": "http://127.0.0.1:9200", "host": "127.0.0.1:9200"}, False),
    ({"origin": "http://127.0.0.1:9201", "host": "127.0.0.1:9200"}, True),
    ({"origin": "http://evil.example", "host": "127.0.0.1:9200"}, True), ({"origin": "null"}, True),
    ({"sec-fetch-site": "same-origin"}, False), ({"sec-fetch-site": "same-site"}, True),
    ({"sec-fetch-site": "cross-site", "origin": "http://h:1", "host": "h:1"}, True),
    ({"origin": "file://", "host": "h:1"}, True)])
def test_a_post_from_another_site_is_seen(headers, cross):
    assert auth.cross_site(headers) is cross


def test_the_generated_token_file_is_0600_kept_and_replaced_when_unsafe(tmp_path: Path):
    sock = tmp_path / "orch.sock"
    os.umask(0o022)
    token, path = auth.load_token(None, sock)
    assert path == tmp_path / "orch.sock.http-token" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.load_token(None, sock)[0] == token, "kept across restarts"
    path.chmod(0o644)
    fresh, _ = auth.load_token(None, sock)
    assert fresh != token and stat.S_IMODE(path.stat().st_mode) == 0o600, "a readable one is replaced"


def test_a_given_token_file_is_refused_when_others_can_read_it_or_it_is_short(tmp_path: Path):
    given = tmp_path / "token"
    given.write_text("short\n")
    given.chmod(0o600)
    with pytest.raises(OrchError, match="at least 16"):
        auth.load_token(given, tmp_path / "orch.sock")
    given.write_text("long-enough-token-0123\n")
    given.chmod(0o640)
    with pytest.raises(OrchError, match="chmod 600"):
        auth.load_token(given, tmp_path / "orch.sock")
    given.chmod(0o400)
    assert auth.load_token(given, tmp_path / "orch.sock") == ("long-enough-token-0123", given)
    with pytest.raises(OrchError, match="cannot read"):
        auth.load_token(tmp_path / "missing", tmp_path / "orch.sock")


def test_a_ring_keeps_the_last_hour_oldest_first_with_gaps_and_clamps():
    ring = Ring()
    for k in range(SLOTS + 5):
        ring.add(1000.0 + 20 * k, None if k == SLOTS + 1 else k / 10, (k + 1) * 1024)
    series = ring.series(20.0)
    assert len(series["cpu"]) == SLOTS == len(series["ts"]) == len(series["rss"])
    assert series["cpu"][0] == pytest.approx(0.5) and series["rss"][0] == 6 * 1024
    assert series["cpu"][-4] is None and series["rss"][-4] is None, "no process: a gap"
    assert series["ts"][-1] == 1000.0 + 20 * (SLOTS + 4) and series["ts"][0] == series["ts"][-1] - 20 * (SLOTS - 1)
    ring.add(0, 1e9, 1 << 60)
    assert ring.series()["cpu"][-1] == 6553.4 and ring.series()["rss"][-1] == 0xFFFFFFFF * 1024


@pytest.mark.parametrize("query,state,hit", [
    ("", "", True), ("web", "", True), ("api", "", True), ("nope", "", False), ("web-*", "", True),
    ("a?i", "", True), ("", "running", True), ("", "stopped", False), ("web", "stopped", False)])
def test_the_page_filter(query, state, hit):
    inst = SimpleNamespace(name="web-3", spec=SimpleNamespace(template="api"),
                           state=SimpleNamespace(value="running"))
    assert matches(inst, query, state) is hit


class _Conn:
    """What Feed needs of a connection: bytes it was given, and how many wait unread."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.backlog = 0
        self.on_close = None

    def stream(self, on_close, on_drained=None, head=True) -> None:
        self.on_close = on_close
        self.on_drained = on_drained

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def finish(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.on_close()


def test_a_page_that_falls_behind_costs_nothing_and_is_told_what_it_missed():
    from orchestrator.loop import EventLoop
    from orchestrator.supervise.journal import Journal
    from orchestrator.supervise.states import State
    from orchestrator.web.feed import MAX_BACKLOG, MAX_STREAMS, Feed
    loop, journal = EventLoop(), Journal()
    fleet = {f"w-{i}": SimpleNamespace(name=f"w-{i}", pid=None, spec=SimpleNamespace(template="w"),
                                       state=State.STOPPED, restarts=0, cpu_percent=0.0,
                                       rss=0, last_exit=None, held=True, uptime=lambda: 0.0) for i in range(3)}
    feed = Feed(loop, lambda: fleet, lambda pid: (0, 0, 1), journal)
    try:
        conn = _Conn()
        feed.open(conn, {"limit": "2"})
        assert any(b"event: page" in d and b'"total":3' in d for d in conn.sent)
        journal.record("started", "w-0", "w", pid=1)
        assert b'"kind":"started"' in conn.sent[-1]
        conn.backlog, before = MAX_BACKLOG + 1, len(conn.sent)
        for _ in range(500):
            journal.record("exited", "w-0", "w", pid=1)
        feed._usage_tick()
        assert len(conn.sent) == before, "nothing more queued for a page that does not read"
        conn.backlog = 0
        journal.record("started", "w-0", "w", pid=2)
        assert conn.sent[-2] == b"event: dropped\ndata: 500\n\n" and b'"pid":2' in conn.sent[-1]
        conn.backlog = MAX_BACKLOG + 1
        for _ in range(3):
            journal.record("exited", "w-0", "w", pid=2)
        conn.backlog = 0
        conn.on_drained()  # it read all that waited: told at once, not at the next record
        assert conn.sent[-1] == b"event: dropped\ndata: 3\n\n"
        conn.on_drained()
        assert conn.sent[-1] == b"event: dropped\ndata: 3\n\n" and conn.sent[-2] != conn.sent[-1], "said once"
        others = [_Conn() for _ in range(MAX_STREAMS)]
        for other in others:
            feed.open(other, {})
        assert b"503" in others[-1].sent[0] and len(feed.streams) == MAX_STREAMS
        for other in [conn, *others[:-1]]:
            other.close()
        assert not feed.streams and feed._usage_timer is None, "nobody looks: no timers, no follower"
        journal.record("started", "w-1", "w", pid=3)  # no follower left to call
    finally:
        loop.close()


def test_orch_dashboard_says_how_to_turn_it_on_when_it_is_off():
    from orchestrator.control.commands import Commands
    from orchestrator.control.server import ControlError
    from orchestrator.loop import EventLoop
    from orchestrator.supervise.events import EventBus
    loop = EventLoop()
    try:
        master = SimpleNamespace(loop=loop, supervisor=SimpleNamespace(events=EventBus()), dashboard=None)
        with pytest.raises(ControlError, match=r'set \[orchestrator\] http = "127.0.0.1:9200"') as caught:
            Commands(master).cmd_dashboard(conn=None)
        assert caught.value.code == 1
        master.dashboard = SimpleNamespace(url="http://127.0.0.1:9200/?token=x", token_file="/t")
        assert Commands(master).cmd_dashboard(conn=None) == {"url": "http://127.0.0.1:9200/?token=x",
                                                              "token_file": "/t"}
    finally:
        loop.close()


def test_the_page_ships_in_the_package_and_loads_nothing_from_elsewhere():
    import re
    from importlib import resources
    static = resources.files("orchestrator.web").joinpath("static")
    texts = {name: static.joinpath(name).read_text() for name in ("index.html", "app.js", "app.css")}
    for name, text in texts.items():
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|fetch\(\"http", text), name
    assert re.findall(r'(?:src|href)="([^"]+)"', texts["index.html"]) == [
        "/static/app.css", "data:,", "/static/app.js"]
    assert sum(len(t) for t in texts.values()) < 40_000, "small: no framework"
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"orchestrator.web" = ["static/*"]' in pyproject, "wheels carry the page"
