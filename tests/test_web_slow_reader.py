"""The dashboard's slow reader over a real socket (issue 29): a page that stops reading while
the fleet churns never slows or grows the master, and when it reads again it is told how
many events it missed and gets the page as it is now."""

from __future__ import annotations

import socket
import threading
import time

import psutil
import pytest

from conftest import wait_for
from servers import free_port
from test_dashboard import Site

from orchestrator.web.feed import MAX_BACKLOG, MAX_STREAMS

CHURN = """
[orchestrator]
http = "127.0.0.1:{port}"

[workers.w_a_long_template_name_to_make_wide_rows_and_records]
command = ["sleep", "0.2"]
replicas = 30
min_uptime = "0.05s"
"""
STUCK = MAX_STREAMS - 1  # every page the master takes but one, which reads
GROWN = 3 * 1024 * 1024  # what the master may grow by while they read nothing


def _open_stream(site: Site, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect: the window the master sees stays this small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", site.port))
    sock.sendall(f"GET /api/stream?limit=500 HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n"
                 f"Authorization: Bearer {site.token}\r\n\r\n".encode())
    return sock


class Counting(threading.Thread):
    """A page that keeps up: counts the bytes the master sends an open page."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.sock, self.bytes = sock, 0

    def run(self) -> None:
        try:
            while data := self.sock.recv(65536):
                self.bytes += len(data)
        except OSError:
            pass


def _events_of(data: bytes) -> list[tuple[str, str]]:
    out = []
    for block in data.split(b"\n\n"):
        fields = dict(line.split(": ", 1) for line in block.decode(errors="replace").splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], fields.get("data", "")))
    return out


@pytest.mark.slow
def test_stuck_pages_never_slow_or_grow_the_master_and_hear_what_they_missed(start_master):
    port = free_port()
    master = start_master(CHURN.format(port=port))
    wait_for(lambda: sum(r["restarts"] for r in master.status().values()) >= 60, 15, message="the fleet churning")
    site = Site(master, port)
    stuck = [_open_stream(site, rcvbuf=4096) for _ in range(STUCK)]  # they open, then read nothing
    twin = Counting(_open_stream(site))
    twin.start()
    proc = psutil.Process(master.pid)
    try:
        # their buffers in the master and in the kernel are full once a reading page got this much
        wait_for(lambda: twin.bytes > 2 * MAX_BACKLOG, 20, message="the pages fed past their backlog")
        rss_before, fed_before = proc.memory_info().rss, twin.bytes
        slowest, asked, began = 0.0, 0, time.monotonic()
        # until unbounded buffers would have grown the master 3 times over the bound (10 s at most)
        while (twin.bytes - fed_before) * STUCK < 3 * GROWN and time.monotonic() - began < 10.0:
            start = time.monotonic()
            master.call("status")
            slowest, asked = max(slowest, time.monotonic() - start), asked + 1
            time.sleep(0.02)
        grown, fed = proc.memory_info().rss - rss_before, twin.bytes - fed_before
        restarts = sum(r["restarts"] for r in master.status().values())
        print(f"while {STUCK} pages read nothing for {time.monotonic() - began:.1f}s: {asked} status calls, "
              f"slowest {slowest * 1000:.1f} ms; a reading page got {fed / 1e6:.2f} MB; master RSS grew "
              f"{grown / 1024:.0f} KiB; {restarts} restarts in all")
        assert fed * STUCK > 2 * GROWN, f"the churn fed a page only {fed} bytes: the test would prove nothing"
        # A master waiting on a stuck page would stall for seconds; 0.5 s leaves room for four
        # xdist workers on two cores (225 ms seen).
        assert slowest < 0.5, f"status took {slowest * 1000:.0f} ms while pages were stuck"
        assert grown < GROWN, f"the master grew {grown} bytes for pages that read nothing"
        # the fleet goes quiet, then a page reads again: no new event will come to carry the news
        master.call("stop", patterns=["w*"], wait=True)
        got = _read_until_told(stuck[0])
        missed = sum(int(d) for kind, d in got if kind == "dropped")
        print(f"a stuck page, reading again: told it missed {missed} events")
        assert missed > 0
        assert "internal error" not in master.stderr(), "the churn broke a handler of the loop"
    finally:
        for sock in (*stuck, twin.sock):
            sock.close()


def _read_until_told(sock: socket.socket, timeout: float = 15.0) -> list[tuple[str, str]]:
    """The events a page reads until it has a "dropped" notice and a page of the stopped fleet."""
    sock.settimeout(0.5)
    got, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = None
        assert data != b"", "the master closed the page"
        got += data or b""
        events = _events_of(got)
        pages = [d for kind, d in events if kind == "page"]
        if any(kind == "dropped" for kind, _ in events) and pages and '"counts":{"stopped":30}' in pages[-1]:
            return events
    raise AssertionError(f"no dropped notice and current page in {timeout}s: {_events_of(got)[-3:]}")
