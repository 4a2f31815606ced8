"""`python -m bench.events`: how soon `orch events -f --json` tells of a crash (issue 29's
figure: a follower sees a restart within 100 ms of the kill).

A master runs N sleeps; one follower (`orch events -f --json`, a real CLI process on the
control socket) reads the stream. Each of `--kills` times, one running sleep is SIGKILLed
and the harness times, on a monotonic clock, the kill -> the follower's line for the exit
(`exited`) and -> the replacement's line (`started`). The median and the 99th percentile go
to RESULTS.md. A test cannot hold this figure (tests never assert wall-clock speed), so it
is measured here, on a quiet machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .report import write_section

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
TARGET_MS = 100.0


def _orch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=30)


def _running(config: Path, n: int, timeout: float = 60.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _orch("status", "--json", "-c", str(config), cwd=config.parent)
        if done.returncode == 0:
            rows = {r["name"]: r["pid"] for r in json.loads(done.stdout) if r["state"] == "running"}
            if len(rows) == n:
                return rows
        time.sleep(0.1)
    raise TimeoutError(f"{n} sleeps did not all run within {timeout:.0f} s")


class Follower:
    """`orch events -f --json`: its lines, each with the monotonic time it was read."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "events", "-f", "--json", "-c",
                                      str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.partial = b""
        self.unread: collections.deque[tuple[bytes, float]] = collections.deque()  # (line, when it was read)

    def until(self, wanted: Any, timeout: float) -> float:
        """The time the first line `wanted(row)` accepts was read (the lines after it in the
        same read wait for the next call: the exit and the replacement's start often come
        in one read)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.unread:
                line, read_at = self.unread.popleft()
                if wanted(json.loads(line)):
                    return read_at
            if time.monotonic() >= deadline:
                raise TimeoutError("the follower did not tell of it")
            lines = self._lines(deadline - time.monotonic())
            now = time.monotonic()
            self.unread.extend((line, now) for line in lines)

    def _lines(self, wait: float) -> list[bytes]:
        if not self.selector.select(max(0.0, wait)):
            return []
        data = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not data:
            raise EOFError("the follower ended")
        *lines, self.partial = (self.partial + data).split(b"\n")
        return lines

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def session(n: int, kills: int) -> tuple[list[float], list[float]]:
    """(kill -> exited, kill -> started) in ms, one pair per kill."""
    with tempfile.TemporaryDirectory(prefix="orch-bench-events-") as tmp:
        folder = Path(tmp)
        config = folder / "workers.toml"
        config.write_text(f'[workers.s]\ncommand = "sleep 3600"\nreplicas = {n}\nmin_uptime = "0s"\n'
                          'backoff = { initial = "0s" }\n')
        master = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-c", str(config), "--quiet"],
                                  cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        follower = None
        exits, starts = [], []
        try:
            rows = _running(config, n)
            follower = Follower(config)
            time.sleep(0.5)  # its history first: every start so far
            for k in range(kills):
                name = sorted(rows)[k * 7 % n]
                pid = rows[name]
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                exited = follower.until(lambda r: r.get("kind") == "exited" and r.get("pid") == pid, 10)
                started = follower.until(lambda r: r.get("kind") == "started" and r.get("instance") == name, 10)
                exits.append((exited - killed) * 1000)
                starts.append((started - killed) * 1000)
                rows = _running(config, n)
        finally:
            if follower is not None:
                follower.stop()
            master.send_signal(signal.SIGTERM)
            try:
                master.wait(30)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
        return exits, starts


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def render(n: int, exits: list[float], starts: list[float]) -> str:
    verdict = "met" if median(exits) < TARGET_MS and p99(exits) < TARGET_MS else "not met"
    load = os.getloadavg()[0]
    return "\n".join([
        f"## `orch events -f` after a crash (`python -m bench.events --n {n} --kills {len(exits)}`)",
        "",
        f"{n} sleeps, {len(exits)} SIGKILLs one at a time, load average {load:.1f} at the end; times from",
        "the kill to the line an `orch events -f --json` process printed.",
        "",
        "| kill -> | median | p99 | max | target | verdict |",
        "|---|--:|--:|--:|--:|---|",
        f"| `exited` line | {median(exits):.1f} ms | {p99(exits):.1f} ms | {max(exits):.1f} ms | "
        f"{TARGET_MS:.0f} ms | {verdict} |",
        f"| `started` line (the replacement) | {median(starts):.1f} ms | {p99(starts):.1f} ms | "
        f"{max(starts):.1f} ms | | |",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="sleeps in the fleet")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    exits, starts = session(args.n, args.kills)
    table = render(args.n, exits, starts)
    print(table)
    if args.write_results:
        write_section(RESULTS_MD, "events", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
