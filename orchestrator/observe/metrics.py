"""Optional Prometheus text endpoint (`[orchestrator] metrics = "127.0.0.1:9108"`), served in
the loop: non-blocking sockets, one short response per connection, never a thread.

Any process of the host can connect, so what scrapers cost is bounded: the text is rendered
at most once per RENDER_EVERY, and every scrape waiting then is served from that one copy
(500 scrapes of 300 instances, each rendered, held the loop 4 s). A scrape is never answered
with a text rendered before its request arrived (a scrape just after a change sees it), so
one may wait up to RENDER_EVERY. At most MAX_CONNECTIONS are open at a time; more wait in
the listen backlog."""

from __future__ import annotations

import gc
import socket
from typing import Callable

from ..acceptor import Admission, part
from ..errors import OrchError
from ..loop import EventLoop, Timer

MAX_REQUEST = 8192
IDLE_TIMEOUT = 5.0  # a client that has not sent its whole request by then is dropped
SEND_TIMEOUT = 30.0  # and one that has not read the whole answer by then
RENDER_EVERY = 1.0  # seconds between two renderings at least
# 64 scrapers at once (Prometheus needs one), and never more than 1/32 of the fd limit; a
# newcomer at the cap closes the oldest connection still sending its request after IDLE_AFTER,
# or else waits in the backlog (a scraper between its connect and its request is not idle).
MAX_CONNECTIONS, FD_SHARE = 64, 32
IDLE_AFTER = 1.0
MASTER_HELP = {
    "orch_instances": "instances the master supervises",
    "orch_reloads_total": "config reloads applied",
    "orch_reload_failures_total": "config reloads that failed and changed nothing",
    "orch_last_reload_seconds": "time the last applied reload took to plan",
    "orch_code_reloads_total": "orch reload --code runs whose new code imported (kept across orch upgrade)",
    "orch_upgrades_total": "orch upgrade re-executions of this master (its pid)",
    "orch_notify_dropped_total": "notify messages dropped: from no instance, or kept too long before one started",
    "orch_metrics_renders_total": "times this text was rendered (at most once a second; scrapes between share it)",
    "orch_metrics_connections_dropped_total": "metrics connections closed for the connection cap or a timeout",
    "orch_master_gc_enabled": "1 when the master's cyclic garbage collector is on (off only during start-up)",
    "orch_master_gc_collections_total": "the master's cyclic garbage collections, every generation",
}


def render_metrics(rows: list[dict], master: dict[str, float]) -> str:
    """The exposition text for status rows plus master counters (pure)."""
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    lines = []
    series = (
        ("orch_instance_up", "gauge", "1 when the instance has a running process",
         lambda r: 1 if r["state"] == "running" else 0),
        ("orch_instance_restarts_total", "counter", "restarts of the instance", lambda r: r["restarts"]),
        ("orch_instance_rss_bytes", "gauge", "resident memory of the instance's process tree",
         lambda r: r["rss"] or 0),
        ("orch_instance_cpu_percent", "gauge", "CPU use since the previous sample, % of one core",
         lambda r: r["cpu"] or 0),
        ("orch_instance_processes", "gauge", "processes in the instance's tree, orphans it left included",
         lambda r: r.get("processes") or 0),
        ("orch_instance_requests", "gauge", "requests handled by the current process", lambda r: r["requests"]),
    )
    for name, kind, text, value in series:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{name="{esc(r["name"])}",template="{esc(r["template"])}"}} {value(r)}' for r in rows]
    lines += ["# HELP orch_instance_limit_kills_total recycles for a limit, by reason",
              "# TYPE orch_instance_limit_kills_total counter"]
    for r in rows:
        for reason, count in sorted(r["limit_kills"].items()):
            lines.append(f'orch_instance_limit_kills_total{{name="{esc(r["name"])}",reason="{reason}"}} {count}')
    return "\n".join(lines + probe_lines(rows, esc) + scalar_lines(master)) + "\n"


PROBE_SERIES = (
    ("orch_instance_ready", "gauge", "1 when the instance is ready (READY=1, min_uptime, or its probes)", None),
    ("orch_probe_up", "gauge", "1 when the probe's last check passed, by probe (startup, readiness, liveness)",
     lambda p: 1 if p["last"] == "ok" else 0),
    ("orch_probe_checks_total", "counter", "checks the probe made on the current process", lambda p: p["checks"]),
    ("orch_probe_failures_total", "counter", "checks of the probe that failed, on the current process",
     lambda p: p.get("failed", 0)),
)


def probe_lines(rows: list[dict], esc: Callable[[str], str]) -> list[str]:
    """The readiness of every instance and each probe's state, for instances with probes (pure)."""
    probed = [r for r in rows if r.get("probes")]
    if not probed:
        return []
    lines = []
    for name, kind, text, value in PROBE_SERIES:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for r in probed:
            label = f'name="{esc(r["name"])}",template="{esc(r["template"])}"'
            if value is None:
                lines.append(f"{name}{{{label}}} {1 if r.get('ready') else 0}")
                continue
            lines += [f'{name}{{{label},probe="{role}",kind="{p["kind"]}"}} {value(p)}'
                      for role, p in r["probes"].items()]
    return lines


def scalar_lines(values: dict[str, float]) -> list[str]:
    """HELP, TYPE and sample lines of unlabelled series (pure)."""
    lines = []
    for name, value in sorted(values.items()):
        kind = "counter" if name.endswith("_total") else "gauge"
        text = MASTER_HELP.get(name, name.removeprefix("orch_").replace("_", " "))
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return lines


def gc_values() -> dict[str, float]:
    """The master's own cyclic garbage collector: on (it is off only while an orch process
    imports and sets up, cli/__init__.py), and its collections so far, every generation."""
    return {"orch_master_gc_enabled": int(gc.isenabled()),
            "orch_master_gc_collections_total": sum(stats["collections"] for stats in gc.get_stats())}


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`, already validated by the config, into (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Scrape:
    """One scraper's connection: its request so far, then the answer left to send."""

    __slots__ = ("sock", "opened", "request", "reply", "timer")

    def __init__(self, sock: socket.socket, opened: float, timer: Timer):
        self.sock = sock
        self.opened = opened
        self.request: bytearray | None = bytearray()  # None once complete
        self.reply: memoryview | None = None  # set when answered
        self.timer = timer


class MetricsServer:
    """Answers any GET with the metrics, rendered at most once per RENDER_EVERY."""

    def __init__(self, loop: EventLoop, address: str, collect: Callable[[], str],
                 sock: socket.socket | None = None):
        """`sock`: the listening socket a master handed over across exec (handover/), else bound."""
        host, port = parse_address(address)
        self.loop = loop
        self.collect = collect
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            self.sock = sock or socket.create_server((host, port), family=family, reuse_port=False)
        except OSError as exc:  # in use, not an address of this host, no IPv6...
            raise OrchError(f"orchestrator.metrics: cannot listen on {address}: "
                            f"{exc.strerror or exc}") from None
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.scrapes: dict[socket.socket, Scrape] = {}  # oldest first
        self.waiting: list[Scrape] = []  # whole requests read, for the next rendering
        self.renders = 0
        self.dropped = 0  # closed for the cap or a timeout
        self._rendered_at = 0.0
        self._render_timer: Timer | None = None
        self.admission = Admission(loop, self.scrapes, lambda s: s.request is not None,
                                   lambda s: self._close(s, timed_out=True), "metrics",
                                   MAX_CONNECTIONS, FD_SHARE, IDLE_AFTER)
        self.acceptor = self.admission.accept(self.sock, self._client)

    def render(self) -> bytes:
        """The whole HTTP answer, rendered now."""
        self.renders += 1
        self._rendered_at = self.loop.time()
        own = {"orch_metrics_renders_total": self.renders, "orch_metrics_connections_dropped_total": self.dropped}
        body = (self.collect() + "\n".join(scalar_lines(own)) + "\n").encode()
        return (f"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

    def _client(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        scrape = Scrape(sock, self.loop.time(),
                        self.loop.call_later(IDLE_TIMEOUT, lambda: self._close(scrape, timed_out=True)))
        self.scrapes[sock] = scrape
        self._read(scrape)  # a scraper usually sends its request with the connection

    def _read(self, scrape: Scrape) -> None:
        assert scrape.request is not None
        try:
            data = scrape.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            self.loop.add_reader(scrape.sock.fileno(), lambda: self._read(scrape))
            return
        except OSError:
            data = b""
        if not data:
            self._close(scrape)
            return
        scrape.request.extend(data)
        if b"\r\n\r\n" not in scrape.request and len(scrape.request) < MAX_REQUEST:
            self.loop.add_reader(scrape.sock.fileno(), lambda: self._read(scrape))
            return
        self.loop.remove_reader(scrape.sock.fileno())
        scrape.request = None
        scrape.timer.cancel()
        scrape.timer = self.loop.call_later(SEND_TIMEOUT, lambda: self._close(scrape, timed_out=True))
        self.waiting.append(scrape)
        if self._render_timer is None:  # at the end of this turn: requests read in it share it
            due = self._rendered_at + RENDER_EVERY if self.renders else 0.0
            self._render_timer = self.loop.call_later(due - self.loop.time(), self._answer_waiting)

    def _answer_waiting(self) -> None:
        self._render_timer = None
        reply = memoryview(self.render())  # one copy for every waiting scrape
        waiting, self.waiting = self.waiting, []
        for scrape in waiting:
            if self.scrapes.get(scrape.sock) is scrape:  # not timed out meanwhile
                scrape.reply = reply
                self._write(scrape)

    def _write(self, scrape: Scrape) -> None:
        """Send what the socket takes now; the rest when it is writable (a slow scraper
        never holds the loop)."""
        assert scrape.reply is not None
        try:
            sent = scrape.sock.send(scrape.reply)
            scrape.reply = scrape.reply[sent:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            scrape.reply = scrape.reply[:0]
        if scrape.reply:
            self.loop.add_writer(scrape.sock.fileno(), lambda: self._write(scrape))
        else:
            self._close(scrape)

    def in_flight(self) -> int:
        """Scrapes still owed an answer; those waiting for the next rendering get it now (an
        upgrade waits for them: up to RENDER_EVERY otherwise)."""
        if self.waiting and self._render_timer is not None:
            self._render_timer.cancel()
            self._answer_waiting()
        return len(self.scrapes)

    def part(self) -> None:
        """Close every connection without a reset (before an upgrade's exec)."""
        for scrape in list(self.scrapes.values()):
            self._close(scrape, parting=True)

    def _close(self, scrape: Scrape, timed_out: bool = False, parting: bool = False) -> None:
        if self.scrapes.pop(scrape.sock, None) is None:
            return  # closed already
        self.dropped += timed_out
        scrape.timer.cancel()
        self.loop.remove_reader(scrape.sock.fileno())
        self.loop.remove_writer(scrape.sock.fileno())
        if parting:
            part(scrape.sock)
        else:
            scrape.sock.close()
        self.acceptor.room_made()

    def close(self) -> None:
        self.admission.close()
        if self._render_timer is not None:
            self._render_timer.cancel()
        for scrape in list(self.scrapes.values()):
            self._close(scrape)
        self.sock.close()
