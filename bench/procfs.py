"""Ground truth from /proc: which fleet processes exist, under which daemon, at what cost.

`Scanner.snapshot()` walks the daemon's tree through /proc/PID/task/*/children and reads
only what it has not seen settled, so polling stays cheap at N = 5,000.
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


def last_pid() -> int:
    """The pid the kernel handed out last (this pid namespace)."""
    with open("/proc/sys/kernel/ns_last_pid", "rb") as f:
        return int(f.read())


_PID_MAX = int(open("/proc/sys/kernel/pid_max").read())
_FIRST_PID_AFTER_WRAP = 300  # the kernel's RESERVED_PIDS


def _pids_after(since: int, last: int) -> range | list[int]:
    if last >= since:
        return range(since + 1, last + 1)
    return [*range(since + 1, _PID_MAX), *range(_FIRST_PID_AFTER_WRAP, last + 1)]  # wrapped


UNBORN = 1.0  # seconds a pid handed out is looked for in /proc before it counts as gone


def wait_changed(wanted: set[str], gone: set[int], since: int, timeout: float, poll: float) -> float:
    """Wait until, for every token in `wanted`, a process handed a pid after `since` runs
    with it in its argv (exec'd), and every pid in `gone` has ended; returns the time it
    took. Raises TimeoutError.

    Only the pids handed out since are read, a few per poll, and the `gone` ones. Walking
    the daemon's children list instead costs O(N) per poll, and at N = 5,000 it holds the
    kernel's tasklist lock (about 3 ms per read) that the tool's own fork and exit need:
    the harness slowed what it timed, and the 10-40 ms between its looks hid a crash
    replacement or a one-instance reload."""
    start = time.perf_counter()
    missing = {token.encode() for token in wanted}
    gone = set(gone)
    pending: set[int] = set()  # forked, not yet exec'd into a fleet command
    # A pid is counted in ns_last_pid before its process shows in /proc (the kernel hands
    # the number out early in fork): one read too soon must not drop it for good, so a pid
    # not there yet is looked at again for UNBORN seconds.
    unborn: dict[int, float] = {}
    while True:
        last = last_pid()
        now = time.perf_counter()
        for pid in (*pending, *unborn, *_pids_after(since, last)):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    words = f.read().replace(b"\0", b" ").split()  # before exec: the tool's argv
            except OSError as exc:
                if (isinstance(exc, FileNotFoundError) and pid not in pending
                        and now - unborn.setdefault(pid, now) < UNBORN):
                    continue  # not in /proc yet: looked at again next time
                pending.discard(pid)  # gone
                unborn.pop(pid, None)
                continue
            unborn.pop(pid, None)
            found = missing.intersection(words)
            if found:
                missing -= found
                pending.discard(pid)
            else:
                pending.add(pid)
        since = last
        gone = {pid for pid in gone if _alive(pid)}
        if not missing and not gone:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{len(missing)} new and {len(gone)} ended processes not seen "
                               f"within {timeout:.0f}s")
        time.sleep(poll)


def _alive(pid: int) -> bool:
    """Not ended: exists and is no zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3] != b"Z"


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's list), from /proc/PID/task/*/children."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


@dataclass
class Snapshot:
    """The processes under the daemon rooted at `root`, at one instant.

    Only the daemon's tree is read (its helpers' children lists), never all of /proc: at
    N = 5,000 a full scan per poll would cost the harness most of a core. `tagged()`, the one
    question about processes outside the tree (orphans), does a full scan on demand."""

    procs: dict[int, Proc]
    root: int | None
    tag: int
    descendants: set[int] = field(default_factory=set)

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
        """Every process of this tag anywhere (orphans included), zombies included: a full scan."""
        found = set()
        for pid in pids():
            p = self.procs.get(pid) or read_proc(pid)
            if p is not None and p.token is not None and token_tag(p.token) == self.tag:
                found.add(pid)
        return found

    def helpers(self) -> list[Proc]:
        """The daemon and its non-fleet descendants (master, spawner, zygotes...)."""
        return [self.procs[pid] for pid in self.descendants
                if self.procs[pid].token is None and self.procs[pid].state != "Z"]


class Scanner:
    """Incremental scanner of one daemon's tree for one fleet tag.

    Walks from the daemon through children lists. A process that carries a token of the tag
    is settled: it is served from cache and its own children are not read (a `sleep` never
    forks, a worker's title stays). Helpers and processes between fork and exec are re-read
    at every poll. Make a new Scanner per measurement: the cache trusts that a PID is not
    reused between two polls.
    """

    def __init__(self, tag: int, root: int | None = None):
        self.tag = tag
        self.root = root
        self._cache: dict[int, Proc] = {}

    def _settled(self, p: Proc) -> bool:
        return p.token is not None and token_tag(p.token) == self.tag

    def snapshot(self) -> Snapshot:
        procs: dict[int, Proc] = {}
        descendants: set[int] = set()
        stack = [self.root] if self.root is not None else []
        while stack:
            pid = stack.pop()
            if pid in descendants:
                continue
            p = self._cache.get(pid) or read_proc(pid)
            if p is None:
                continue
            procs[pid] = p
            descendants.add(pid)
            if not self._settled(p):
                stack.extend(child_pids(pid))
        self._cache = {pid: p for pid, p in procs.items() if self._settled(p)}
        return Snapshot(procs, self.root, self.tag, descendants)

    def wait(self, done: Callable[[Snapshot], bool], timeout: float, poll: float = 0.005,
             what: str = "condition") -> float:
        """Poll until `done(snapshot)`; returns the time it took. Raises TimeoutError.

        The pause between polls is at least twice the last poll's own cost, so the harness
        never takes more than a third of a core from what it measures."""
        start = time.perf_counter()
        while True:
            began = time.perf_counter()
            if done(self.snapshot()):
                return time.perf_counter() - start
            now = time.perf_counter()
            if now - start > timeout:
                raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
            time.sleep(max(poll, 2 * (now - began)))


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


def quiet(procs: list[Proc], cap: float, window: float = 2.0, share: float = 1.0) -> float:
    """Wait until `procs` use under `share` % of a core over `window` seconds (a start's
    aftermath is over), or `cap` seconds passed; the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < cap and cpu_percent(procs, window)[0] >= share:
        pass
    return time.monotonic() - began


def kill_all(root: int | None, tag: int) -> None:
    """SIGKILL the daemon's process group, every descendant's group, and every process of `tag`."""
    snap = Scanner(tag, root).snapshot()
    victims = set(snap.descendants) | snap.tagged()
    own = os.getpgid(0)
    procs = {pid: snap.procs.get(pid) or read_proc(pid) for pid in victims}
    groups = {p.pgid for p in procs.values() if p is not None} - {0, 1, own}
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
