"""Optional Prometheus text endpoint (`[orchestrator] metrics = "127.0.0.1:9108"`), served in
the loop: non-blocking sockets, one short response per connection, never a thread."""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable

from ..errors import OrchError
from ..loop import EventLoop

log = logging.getLogger("orch")
MAX_REQUEST = 8192
IDLE_TIMEOUT = 5.0  # a client that has not sent its whole request by then is dropped
MASTER_HELP = {
    "orch_instances": "instances the master supervises",
    "orch_reloads_total": "config reloads applied",
    "orch_reload_failures_total": "config reloads that failed and changed nothing",
    "orch_last_reload_seconds": "time the last applied reload took to plan",
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
    for name, value in sorted(master.items()):
        kind = "counter" if name.endswith("_total") else "gauge"
        text = MASTER_HELP.get(name, name.removeprefix("orch_").replace("_", " "))
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`, already validated by the config, into (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """Answers any GET with the current metrics."""

    def __init__(self, loop: EventLoop, address: str, collect: Callable[[], str]):
        host, port = parse_address(address)
        self.loop = loop
        self.collect = collect
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            self.sock = socket.create_server((host, port), family=family, reuse_port=False)
        except OSError as exc:  # in use, not an address of this host, no IPv6...
            raise OrchError(f"orchestrator.metrics: cannot listen on {address}: "
                            f"{exc.strerror or exc}") from None
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, OSError):
                return
            client.setblocking(False)
            buffer = bytearray()
            # One timer per connection: a client that connects and sends nothing (or half a
            # request) would otherwise hold an fd and a reader for ever.
            timer = self.loop.call_later(IDLE_TIMEOUT, lambda c=client: self._drop(c))
            self.loop.add_reader(client.fileno(), lambda c=client, b=buffer, t=timer: self._read(c, b, t))

    def _drop(self, client: socket.socket) -> None:
        if client.fileno() < 0:
            return  # answered and closed already
        self.loop.remove_reader(client.fileno())
        client.close()

    def _read(self, client: socket.socket, buffer: bytearray, timer: Any) -> None:
        try:
            data = client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        buffer.extend(data)
        if data and b"\r\n\r\n" not in buffer and len(buffer) < MAX_REQUEST:
            return
        self.loop.remove_reader(client.fileno())
        timer.cancel()
        if not data:
            client.close()
            return
        body = self.collect().encode()
        head = (f"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        pending = bytearray(head + body)
        self._write(client, pending)

    def _write(self, client: socket.socket, pending: bytearray) -> None:
        """Send what the socket takes now; the rest when it is writable (a slow scraper
        never holds the loop)."""
        try:
            sent = client.send(pending)
            del pending[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pending.clear()
        if pending:
            self.loop.add_writer(client.fileno(), lambda: self._write(client, pending))
            return
        self.loop.remove_writer(client.fileno())
        client.close()

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
