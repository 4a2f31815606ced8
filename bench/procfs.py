"""Ground truth from /proc: which fleet processes exist, under which daemon, at what cost.

`Scanner.snapshot()` lists /proc and reads only what it has not seen settled: a process
whose argv holds a token of the current tag is cached (a `sleep` never changes again, a
titled worker keeps its name), everything else is read afresh, so polling every
millisecond stays cheap with 500 children. Make a new Scanner per measurement: the cache
trusts that a PID is not reused between two polls.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from .fleet import token_tag

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Proc:
    """One /proc/PID entry."""

    pid: int
    ppid: int
    pgid: int
    state: str
    cpu_ticks: int          # utime + stime
    rss_pages: int
    argv: tuple[str, ...]
    token: str | None       # the fleet token in argv, if any


def read_proc(pid: int) -> Proc | None:
    """Read /proc/PID/stat and cmdline; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    return Proc(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), state=fields[0].decode(),
                cpu_ticks=int(fields[11]) + int(fields[12]), rss_pages=int(fields[21]),
                argv=argv, token=_find_token(argv))


def _find_token(argv: tuple[str, ...]) -> str | None:
    for arg in argv:
        for word in arg.split():
            if token_tag(word) is not None:
                return word
    return None


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


@dataclass
class Snapshot:
    """All processes at one instant, with the fleet's view of the daemon rooted at `root`."""

    procs: dict[int, Proc]
    root: int | None
    tag: int
    descendants: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.root is not None and self.root in self.procs:
            children: dict[int, list[int]] = {}
            for p in self.procs.values():
                children.setdefault(p.ppid, []).append(p.pid)
            stack = [self.root]
            while stack:
                pid = stack.pop()
                self.descendants.add(pid)
                stack.extend(children.get(pid, ()))

    def _ours(self, p: Proc) -> bool:
        return p.token is not None and token_tag(p.token) == self.tag and p.state != "Z"

    def by_token(self) -> dict[str, set[int]]:
        """Token -> PIDs of the daemon's live descendants that carry it."""
        out: dict[str, set[int]] = {}
        for pid in self.descendants:
            p = self.procs[pid]
            if self._ours(p):
                out.setdefault(p.token, set()).add(pid)  # type: ignore[arg-type]
        return out

    def tagged(self) -> set[int]:
        """Every process of this tag anywhere (orphans included), zombies included."""
        return {p.pid for p in self.procs.values() if p.token is not None and token_tag(p.token) == self.tag}

    def helpers(self) -> list[Proc]:
        """The daemon and its non-fleet descendants (master, spawner, zygotes...)."""
        return [self.procs[pid] for pid in self.descendants
                if self.procs[pid].token is None and self.procs[pid].state != "Z"]


class Scanner:
    """Incremental /proc scanner for one fleet tag under one daemon.

    Re-reads only new PIDs and the daemon's descendants that carry no token yet (helpers,
    children between fork and exec); everything else is settled and served from cache.
    """

    def __init__(self, tag: int, root: int | None = None):
        self.tag = tag
        self.root = root
        self._cache: dict[int, Proc] = {}

    def snapshot(self) -> Snapshot:
        procs: dict[int, Proc] = {}
        for pid in pids():
            p = self._cache.get(pid) or read_proc(pid)
            if p is not None:
                procs[pid] = p
        snap = Snapshot(procs, self.root, self.tag)
        self._cache = {pid: p for pid, p in procs.items()
                       if pid not in snap.descendants or (p.token is not None and token_tag(p.token) == self.tag)}
        return snap

    def wait(self, done: Callable[[Snapshot], bool], timeout: float, poll: float = 0.005,
             what: str = "condition") -> float:
        """Poll until `done(snapshot)`; returns the time it took. Raises TimeoutError."""
        start = time.perf_counter()
        while True:
            if done(self.snapshot()):
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
            time.sleep(poll)


def cpu_seconds(pid: int) -> float | None:
    """CPU time of every thread of `pid`, in ns precision from schedstat (ticks as fallback)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        p = read_proc(pid)
        return None if p is None else p.cpu_ticks / CLK_TCK


def usage(procs: list[Proc]) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of these processes, read now."""
    cpu, rss = 0.0, 0
    for p in procs:
        fresh = read_proc(p.pid)
        seconds = cpu_seconds(p.pid)
        if fresh is not None and seconds is not None:
            cpu += seconds
            rss += fresh.rss_pages * PAGE
    return cpu, rss


def pss(procs: list[Proc]) -> int:
    """Proportional set size in bytes: a page shared by k processes counts 1/k to each, so a
    forked helper's copy-on-write pages are not counted twice (smaps_rollup)."""
    total = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def cpu_percent(procs: list[Proc], window: float) -> tuple[float, int]:
    """Sleep `window` seconds; return (CPU % of one core used by `procs`, their RSS in bytes)."""
    c0, _ = usage(procs)
    start = time.perf_counter()
    time.sleep(window)
    c1, rss = usage(procs)
    return 100.0 * (c1 - c0) / (time.perf_counter() - start), rss


def kill_all(root: int | None, tag: int) -> None:
    """SIGKILL the daemon's process group, every descendant's group, and every process of `tag`."""
    snap = Scanner(tag, root).snapshot()
    victims = set(snap.descendants) | snap.tagged()
    own = os.getpgid(0)
    groups = {snap.procs[pid].pgid for pid in victims} - {0, 1, own}
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for pid in victims - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
