"""What one open dashboard costs the master at N = 5,000 instances (issue 29's target: under
2 % of a core). Three measurements of the master's CPU (user + system from /proc) over the
same idle window: without `http`; with `http` and no page open (the hour of samples is
being kept); with one page open the way a browser keeps it (its event stream of 100 rows,
and an instance's panel polled every 5 s as app.js does); and with one page filtered by a
glob instead. `python -m bench.dashboard
[--write-results]` adds its section to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from .report import RESULTS_MD, write_section

N = 5000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(folder: Path, http: bool) -> tuple[subprocess.Popen, Path, int]:
    port = _free_port()
    config = folder / "workers.toml"
    config.write_text("[orchestrator]\nwatch = false\n" + (f'http = "127.0.0.1:{port}"\n' if http else "")
                      + f'[workers.w]\ncommand = "sleep 3600"\nreplicas = {N}\n')
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-c", str(config), "--quiet"],
                            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if sum(1 for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "sleep") >= N:
                return proc, config, port
        except psutil.Error:
            pass
        time.sleep(1)
    raise RuntimeError("the fleet did not start")


def _cpu(pid: int, seconds: float) -> float:
    """% of one core the process used over the next `seconds`."""
    proc = psutil.Process(pid)
    before, began = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, took = proc.cpu_times(), time.monotonic() - began
    return 100 * ((after.user + after.system) - (before.user + before.system)) / took


class Page:
    """One open dashboard page: its event stream read as it comes, its panel polled."""

    def __init__(self, port: int, token: str, query: str = "offset=0&limit=100"):
        self.port, self.token = port, token
        self.bytes = self.messages = self.polls = 0
        self.stop = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"GET /api/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Authorization: Bearer {token}\r\n\r\n".encode())
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._poll, daemon=True).start()

    def _read(self) -> None:
        while not self.stop.is_set():
            data = self.sock.recv(65536)
            if not data:
                return
            self.bytes += len(data)
            self.messages += data.count(b"event: page")

    def _poll(self) -> None:
        while not self.stop.wait(5.0):
            for path in ("/api/instance?name=w-1", "/api/log?name=w-1&lines=200"):
                request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                                 headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(request, timeout=10) as reply:
                    json.load(reply)
            self.polls += 1

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def measure(idle: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, _, _ = _start(Path(tmp), http=False)
        try:
            time.sleep(5)
            figures["off_cpu"] = _cpu(proc.pid, idle)
            figures["off_rss"] = psutil.Process(proc.pid).memory_info().rss / 2**20
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(120)
    with tempfile.TemporaryDirectory() as tmp:
        proc, config, port = _start(Path(tmp), http=True)
        try:
            time.sleep(5)
            figures["on_cpu"] = _cpu(proc.pid, idle)
            token = (config.parent / ".orch" / "workers" / "orch.sock.http-token").read_text().strip()
            page = Page(port, token)
            time.sleep(2)
            figures["page_cpu"] = _cpu(proc.pid, idle)
            figures["on_rss"] = psutil.Process(proc.pid).memory_info().rss / 2**20
            figures["page_bytes_s"] = page.bytes / (idle + 2)
            figures["page_messages"] = page.messages
            figures["polls"] = page.polls
            page.close()
            filtered = Page(port, token, "offset=0&limit=100&q=w-49*")  # the fleet scanned at each update
            time.sleep(2)
            figures["filtered_cpu"] = _cpu(proc.pid, idle)
            filtered.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(120)
    return figures


def render(f: dict[str, float], idle: float) -> str:
    cost = f["page_cpu"] - f["off_cpu"]
    return "\n".join([
        "## The web dashboard at N = 5,000: what one open page costs the master (bench/dashboard.py)", "",
        f"Produced by `python -m bench.dashboard --write-results`; {N} `sleep` instances, 2 cores shared "
        f"with other work, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"each figure is the master's CPU over {idle:.0f} s.", "",
        "| master | CPU, % of one core | RSS |", "|---|--:|--:|",
        f"| `http` unset | {f['off_cpu']:.2f} % | {f['off_rss']:.0f} MiB |",
        f"| `http` set, no page open (an hour of samples kept: a slice of the fleet a second) | "
        f"{f['on_cpu']:.2f} % | – |",
        f"| one page open (100 rows live, an instance's panel polled every 5 s) | {f['page_cpu']:.2f} % | "
        f"{f['on_rss']:.0f} MiB |",
        f"| one page open, filtered by a glob (`w-49*`: the whole fleet scanned at each update) | "
        f"{f['filtered_cpu']:.2f} % | – |", "",
        f"One open page costs **{cost:.2f} %** of a core over the master without a dashboard (target: "
        f"under 2 %). The page received {f['page_bytes_s'] / 1024:.1f} KiB/s in "
        f"{f['page_messages']:.0f} page messages and {f['polls']:.0f} panel polls.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds measured per figure (default 30)")
    parser.add_argument("--write-results", action="store_true", help=f"add the section to {RESULTS_MD.name}")
    args = parser.parse_args()
    text = render(measure(args.idle), args.idle)
    print(text)
    if args.write_results:
        write_section(RESULTS_MD, "dashboard", text)


if __name__ == "__main__":
    main()
