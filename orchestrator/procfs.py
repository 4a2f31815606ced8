"""Cheap reads of /proc for the paths that run every second or for every instance: raw
os.read on small files, no per-sample process objects. Everything else asks psutil.

Why these bypass psutil (bench/libraries.py measures both in one run): the `rss` memory
limits read each instance's `statm` through a kept fd, about 2 us, against 50 us or more
for psutil's open-read-close per call (5,000 instances once a second: 1 % of a core
against 25 %); the status rows at 5,000 instances read stat and children the same way;
and the spawner, which imports only spawn/ and this floor, counts each exit's orphans."""

from __future__ import annotations

import errno
import os
import resource
import time
from typing import Any, Callable

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TRACK_QUIET = 0.3  # seconds without a new spawn after which new main processes' files are opened
# ... at most TRACK_SLICE of them per turn of the loop, TRACK_GAP apart: after a start of 5,000
# the 10,000 opens were one 220 ms callback (measured by loop instrumentation), and a crash
# landing then waited for it.
TRACK_SLICE, TRACK_GAP = 100, 0.001
KEEP_FREE_MIN, KEEP_FREE_SHARE = 64, 16  # fds kept /proc fds leave free: 1/16 of the limit, at least 64


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        data = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; guards against recycled pids."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def is_running(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] not in (b"Z", b"X")


def session(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[3]) if fields and fields[0] not in (b"Z", b"X") else None


def process_group(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[2]) if fields else None


def environ(pid: int, limit: int = 1 << 20) -> bytes | None:
    """The environment a process was started with (NUL-separated); None if unreadable."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def env_value(env: bytes, name: str) -> str | None:
    """One variable of an `environ()` block (pure)."""
    key = name.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def rss(pid: int) -> int:
    """Resident set size in bytes (0 if gone)."""
    try:
        return int(_read(f"/proc/{pid}/statm").split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def _read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def children(pid: int) -> list[int]:
    """Direct children (all of them: a subreaper may have thousands; the kernel's children
    file costs O(n^2) to read, so callers read it sparingly)."""
    pids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                pids += [int(p) for p in _read_all(f"/proc/{pid}/task/{tid}/children").split()]
            except OSError:
                pass
    except OSError:
        pass
    return pids


def tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children(current)
    return found


def tree_rss(pid: int) -> int:
    """RSS of a whole process tree, in bytes."""
    return sum(rss(p) for p in tree(pid))


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _usage(stat: bytes) -> tuple[int, int]:
    """(RSS bytes, CPU ticks including reaped children) from one /proc/PID/stat (pure)."""
    fields = stat[stat.rindex(b")") + 2:].split(None, 22)  # up to rss: half the objects of a full split
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return int(fields[21]) * PAGE_SIZE, ticks


def tree_usage(pid: int) -> tuple[int, int, int]:
    """(RSS bytes, CPU ticks, processes) of a process and all its descendants."""
    size = ticks = count = 0
    for member in tree(pid):
        try:
            rss_bytes, cpu = _usage(_read(f"/proc/{member}/stat"))
        except (OSError, ValueError, IndexError):
            continue
        size, ticks, count = size + rss_bytes, ticks + cpu, count + 1
    return size, ticks, count


def kept_fd_ceiling() -> int:
    """The lowest fd number a kept /proc fd may not have: the last fds below the limit are
    left to what needs them more (control connections, new instances' pipes and logs)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft - max(KEEP_FREE_MIN, soft // KEEP_FREE_SHARE) if soft != resource.RLIM_INFINITY else 1 << 30


def _kept(path: str) -> int:
    """An fd of `path` to keep open, or -1 when there is none to spare: the table is full, or
    the fd would be among the last free ones (fds are handed out lowest first: a number that
    high means the ones below are all taken). Other errors (the process is gone) raise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return -1
        raise
    if fd >= kept_fd_ceiling():
        os.close(fd)
        return -1
    return fd


class TreeSampler:
    """RSS, CPU and process count of process trees, with each leader's /proc files kept
    open between samples: a pread of an open procfs file returns fresh values, and saves
    the open and close that dominate a sample of hundreds of trees."""

    def __init__(self) -> None:
        self._fds: dict[int, tuple[int, ...]] = {}  # leader pid -> (stat, children) fds
        self._statm: dict[int, int] = {}  # leader pid -> statm fd, for the memory limits
        self._below: dict[int, list[int]] = {}  # leader pid -> descendants at the last look
        self._pending: list[int] = []  # new main processes whose files open after their burst
        self._last_pending = 0.0

    def track(self, pid: int) -> None:
        """Open a new main process's files now (at its spawn), not in the first `orch status`:
        at 5,000 instances the 10,000 opens were most of that first answer."""
        if pid not in self._fds:
            self._open(pid)

    def track_later(self, pid: int, call_later: Callable[[float, Callable[[], None]], Any],
                    live: Callable[[int], bool]) -> None:
        """`track`, once a burst of spawns is over (no new one for TRACK_QUIET s): the opens
        were 6 % of the master's CPU while it started 2,000 instances (profiled), CPU the
        spawner wanted; still before the first `orch status` after a start has settled. Only pids
        still `live` then are opened (one that exited meanwhile was forgotten)."""
        self._pending.append(pid)
        self._last_pending = time.monotonic()
        if len(self._pending) == 1:
            def due() -> None:
                wait = self._last_pending + TRACK_QUIET - time.monotonic()
                if wait > 0:
                    call_later(wait, due)
                    return
                pids, self._pending = self._pending[:TRACK_SLICE], self._pending[TRACK_SLICE:]
                for each in pids:
                    if live(each):
                        self.track(each)
                if self._pending:  # the rest next turn: an exit read between two slices is handled first
                    call_later(TRACK_GAP, due)
            call_later(TRACK_QUIET, due)

    def _open(self, pid: int) -> tuple[int, ...] | None:
        fds: list[int] = []  # -1: none to spare, the file is read without keeping one
        try:
            for name in ("stat", f"task/{pid}/children"):
                fds.append(_kept(f"/proc/{pid}/{name}"))
        except OSError:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
            return None
        self._fds[pid] = tuple(fds)
        return self._fds[pid]

    def rss(self, pid: int, extra: tuple[int, ...] = ()) -> int:
        return self.usage(pid, extra)[0]

    def sample(self, pid: int) -> tuple[int, int]:
        """(RSS of the whole tree in bytes, CPU ticks of the tree); (0, 0) if it is gone."""
        return self.usage(pid)[:2]

    def usage(self, pid: int, extra: tuple[int, ...] = ()) -> tuple[int, int, int]:
        """(RSS bytes, CPU ticks, processes) of the tree under `pid` plus the trees under
        `extra` (orphans the spawner attributed to it); (0, 0, 0) if the leader is gone."""
        read = self._read_leader(pid)
        if read is None:
            return 0, 0, 0
        fields, below = read
        total = int(fields[21]) * PAGE_SIZE
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        if not below and not extra:  # a lone process: the usual worker
            return total, ticks, 1
        count = 1
        for root in (*map(int, below), *extra):
            size, cpu, members = tree_usage(root)
            total, ticks, count = total + size, ticks + cpu, count + members
        return total, ticks, count

    def memory(self, pid: int, extra: tuple[int, ...] = (), look: bool = True) -> int:
        """RSS in bytes of the tree under `pid` plus the trees under `extra` (0 if the leader
        is gone), for the memory limits. When `look` (the limits ask every few samples, and
        on an instance's first), the leader's stat and children are read and its
        descendants looked up again; in between, its statm (which the kernel makes in about
        half the time of stat) and the descendants found last. At 5,000 instances this keeps
        a sample near the cost of one small read per instance."""
        below = self._below.get(pid)
        if look or below is None:
            size, below = self._look(pid)
            if below is None:
                return 0
            self._below[pid] = below
        else:
            fd = self._statm.get(pid)
            if fd is None:
                fd = self._open_statm(pid)
            try:
                statm = os.pread(fd, 128, 0) if fd is not None and fd >= 0 else _read(f"/proc/{pid}/statm")
                size = int(statm.split(None, 2)[1]) * PAGE_SIZE
            except (OSError, IndexError, ValueError):
                self.forget(pid)
                return 0
        if below:
            size += sum(map(rss, below))
        if extra:
            size += sum(map(tree_rss, extra))
        return size

    def _open_statm(self, pid: int) -> int | None:
        try:
            fd = _kept(f"/proc/{pid}/statm")
        except OSError:
            return None
        self._statm[pid] = fd
        return fd

    def _look(self, pid: int) -> tuple[int, list[int] | None]:
        """(the leader's RSS, its descendants); (0, None) if it is gone."""
        read = self._read_leader(pid)
        if read is None:
            return 0, None
        fields, below = read
        return int(fields[21]) * PAGE_SIZE, [member for child in below for member in tree(int(child))]

    def _read_leader(self, pid: int) -> tuple[list[bytes], list] | None:
        """(the leader's /proc stat fields after the name, its children); None if it is gone
        (its fds are then closed). The main thread's children file from the kept fd; a
        multi-threaded leader, or one whose fds could not be kept, gets the full walk."""
        fds = self._fds.get(pid) or self._open(pid)
        if fds is None:
            return None
        try:
            stat = os.pread(fds[0], 4096, 0) if fds[0] >= 0 else _read(f"/proc/{pid}/stat")
            fields = stat[stat.rindex(b")") + 2:].split(None, 22)  # up to rss, the last field read
            below = os.pread(fds[1], 4096, 0).split() if fields[17] == b"1" and fds[1] >= 0 else children(pid)
            if len(fields) < 22:
                raise ValueError("short stat")
        except (OSError, IndexError, ValueError):
            self.forget(pid)
            return None
        return fields, below

    def forget(self, pid: int) -> None:
        for fd in self._fds.pop(pid, ()):
            if fd >= 0:
                os.close(fd)
        fd = self._statm.pop(pid, -1)
        if fd >= 0:
            os.close(fd)
        self._below.pop(pid, None)

    def close(self) -> None:
        for pid in {*self._fds, *self._statm}:
            self.forget(pid)
