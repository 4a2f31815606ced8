"""`python -m bench.probes_idle`: what health probes cost an idle orch master (issue 27's target:
5,000 instances, each with a 10 s tcp probe, under 2 % of one core).

N sleeps, each with `probes.readiness = { tcp = "127.0.0.1:PORT", period = "10s" }` against a
listener this harness holds (a thread accepts and closes, so the backlog never fills), and
the same N without probes, interleaved. Per mode: the time until all N run, then, once every
probe has run at least twice, the CPU of the master process alone (% of one core) over
`--seconds`, the probe checks the master counted meanwhile (`orch status --json`, read
outside the CPU window) and how many connections the listener accepted (none since local tcp
probes are answered from the kernel's listener table, supervise/listen_lookup.py).
And two floors: the CPU a bare loop spends per non-blocking socket + connect + close against
the same listener (what a prober that connects cannot avoid), and per probe answered by the
listener table in rounds of 25 (the size of a 50 ms tick at 5,000 probes every 10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from _socket import socket as raw_socket
from typing import Any

from . import fleet as fleets
from orchestrator.config.probes import Probe
from orchestrator.supervise.listen_lookup import ListenLookup

from .idle import Rows, by_size, interleaved, median, sleeping, spread, stop
from .procfs import Scanner, cpu_percent
from .report import write_section
from .scenarios import SETTLE
from .tools.orch import Orch

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
PERIOD = 10.0


class Listener:
    """A loopback port that accepts every connection and closes it, counting them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()


class ProbedOrch(Orch):
    """orch with a tcp readiness probe (period 10 s) on every instance, or none."""

    def __init__(self, port: int | None, period: float = PERIOD) -> None:
        super().__init__()
        self.port = port
        self.period = period

    def render_config(self, fleet: fleets.Fleet) -> str:
        text = super().render_config(fleet)
        if self.port is None:
            return text
        probe = f'probes = {{ readiness = {{ tcp = "127.0.0.1:{self.port}", period = "{self.period:g}s" }} }}\n'
        return text.replace("[defaults]\n", "[defaults]\n" + probe, 1)


def floor(listener: Listener, count: int = 2000) -> float:
    """Microseconds of this thread's CPU per socket + non-blocking connect + close (paced at
    about 1,000 a second, as probes come, not in a tight loop), with the C socket type as the
    master's checks use it, so that no Python wrapper is counted in the floor."""
    used = 0.0
    for _ in range(count):
        began = time.thread_time()
        sock = raw_socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        sock.connect_ex(("127.0.0.1", listener.port))
        sock.close()
        used += time.thread_time() - began
        time.sleep(0.001)
    return 1e6 * used / count


def table_floor(listener: Listener, count: int = 2000, batch: int = 25) -> float:
    """Microseconds of this thread's CPU per probe answered from the listener table, `batch`
    probes a round, paced like ticks."""
    lookup = ListenLookup()
    probes = [Probe("readiness", "tcp", "127.0.0.1", listener.port, "", PERIOD, 1.0, 1, 1)] * batch
    used = 0.0
    rounds = max(1, count // batch)
    lookup.answer(probes)  # opens the netlink socket, once per master
    try:
        for _ in range(rounds):
            began = time.thread_time()
            answers = lookup.answer(probes)
            used += time.thread_time() - began
            if answers[0] != (True, "ok"):
                raise RuntimeError(f"the listener table did not answer: {answers[0]}")
            time.sleep(0.01)
    finally:
        if lookup.sock is not None:
            lookup.sock.close()
    return 1e6 * used / (rounds * batch)


def _checks(tool: ProbedOrch) -> tuple[float, int]:
    """(when, the probe checks the master has made so far), from `orch status --json`."""
    rows = json.loads(tool.status())
    rows = rows.values() if isinstance(rows, dict) else rows
    return time.monotonic(), sum(probe.get("checks", 0) for row in rows for probe in (row.get("probes") or {}).values())


def _times(pid: int) -> tuple[float, float]:
    """A process's user and system CPU seconds so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def session(probed: bool, n: int, seconds: float, listener: Listener, period: float = PERIOD) -> dict[str, Any]:
    tool = ProbedOrch(listener.port if probed else None, period)
    with sleeping(tool, f"orchbench-probes-{'on' if probed else 'off'}-", n) as (fleet, start):
        time.sleep(SETTLE + 2 * period if probed else SETTLE)  # past the first, bunched checks
        master = [p for p in Scanner(fleet.tag, tool.pid).snapshot().helpers() if p.pid == tool.pid]
        counted = _checks(tool) if probed else (0.0, 0)
        before, times, load = listener.accepted, _times(tool.pid), os.getloadavg()[0]
        cpu, rss = cpu_percent(master, seconds)
        connects = (listener.accepted - before) / seconds
        user, system = (100 * (b - a) / seconds for a, b in zip(times, _times(tool.pid)))
        after = _checks(tool) if probed else (1.0, 0)
        probes = (after[1] - counted[1]) / (after[0] - counted[0])
        stop(tool)
        return {"start": start, "cpu": cpu, "rss": rss / 2**20, "probes_per_s": probes, "connects_per_s": connects,
                "user": user, "sys": system, "load": (load + os.getloadavg()[0]) / 2}


def render(rows: Rows, args: argparse.Namespace, floors: tuple[float, float]) -> str:
    out = ["## Health probes on every instance, idle: the master's CPU", "",
           f"`python -m bench.probes_idle --n {args.n} --seconds {args.seconds:g} --reps {args.reps}`: N sleeps, "
           f'each with `probes.readiness = {{ tcp = "127.0.0.1:PORT", period = "{args.period:g}s" }}` against one '
           "loopback listener of the harness, and the same N without probes; CPU of the master process alone "
           f"over {args.seconds:g} s once every probe ran twice (median of {args.reps}, min-max). Target "
           "(issue 27): under 2 % of one core at N = 5,000.", "",
           "| N | probes | master CPU % of a core | probe checks /s | of which connected /s | start s "
           "| master RSS MiB |", "|---|---|---|---|---|---|---|"]
    for probed, n, runs in by_size(rows):
        out.append(f"| {n:,} | {f'tcp every {args.period:g} s' if probed else 'none'} | {spread(runs, 'cpu', 2)} | "
                   f"{median(runs, 'probes_per_s'):.0f} | {median(runs, 'connects_per_s'):.0f} | "
                   f"{median(runs, 'start'):.1f} | {median(runs, 'rss'):.0f} |")
    out += ["", _per_check(rows, floors)]
    return "\n".join(out)


def _per_check(rows: Rows, floors: tuple[float, float]) -> str:
    """The cost of one check, from the largest N: the master's CPU with probes less without,
    per check, beside the floors of a connect and of the listener table."""
    floor_us, table_us = floors
    n = max(n for _, n in rows)
    on, off = rows.get((True, n)), rows.get((False, n))
    if not on or not off:
        return (f"Floors: {floor_us:.0f} us of CPU per socket + connect + close, {table_us:.0f} us per probe "
                "answered from the listener table.")
    mid = on[len(on) // 2]
    extra = median(on, "cpu") - median(off, "cpu")
    rate = median(on, "probes_per_s") or 1
    per = 1e4 * extra / rate
    verdict = "met" if median(on, "cpu") < 2.0 else "missed"
    return (f"Per check at N = {n:,}: {per:.0f} us of the master's CPU ({extra:.2f} % of a core for {rate:.0f} "
            f"checks/s; user {1e4 * mid.get('user', 0) / rate:.0f} us, system {1e4 * mid.get('sys', 0) / rate:.0f} us "
            f"per check, load average {mid.get('load', 0):.0f} during the run). Floors in the same run: a bare "
            f"socket + non-blocking connect + close on loopback costs {floor_us:.0f} us (the kernel's TCP handshake "
            f"and teardown, which a prober that connects pays: {floor_us * rate / 1e4:.1f} % of a core at this "
            f"rate); a probe answered from the kernel's listener table, 25 a round, {table_us:.1f} us "
            f"({table_us * rate / 1e4:.2f} % of a core). The 2 % target is {verdict} in this run.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probes_idle", description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="5000", help="fleet sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--period", type=float, default=PERIOD, help="seconds between two checks of a probe")
    parser.add_argument("--floor", type=int, default=2000, help="bare connects timed for the floor")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    listener = Listener()
    floors = floor(listener, args.floor), table_floor(listener, args.floor)
    print(f"floors: {floors[0]:.0f} us per socket + connect + close, {floors[1]:.1f} us per probe from the "
          "listener table", file=sys.stderr, flush=True)
    try:
        rows = interleaved(args.n, args.reps, (True, False), "probes",
                           lambda probed, n: session(bool(probed), n, args.seconds, listener, args.period))
    finally:
        listener.close()
    table = render(rows, args, floors)
    print(table)
    if args.write_results:
        write_section(RESULTS_MD, "probes-idle", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
