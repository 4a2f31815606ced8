"""Cheap reads of /proc: raw os.read on small files, no per-sample process objects."""

from __future__ import annotations

import os

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
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


def process_group(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[2]) if fields else None


def rss(pid: int) -> int:
    """Resident set size in bytes (0 if gone)."""
    try:
        return int(_read(f"/proc/{pid}/statm").split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def children(pid: int) -> list[int]:
    pids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                pids += [int(p) for p in _read(f"/proc/{pid}/task/{tid}/children").split()]
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


class TreeSampler:
    """RSS of process trees, with each leader's /proc files kept open between samples:
    a pread of an open procfs file returns fresh values, and saves the open and close
    that dominate a sample of hundreds of trees."""

    def __init__(self) -> None:
        self._fds: dict[int, tuple[int, ...]] = {}  # leader pid -> (statm, stat, children) fds

    def _open(self, pid: int) -> tuple[int, ...] | None:
        fds: list[int] = []
        try:
            for name in ("statm", "stat", f"task/{pid}/children"):
                fds.append(os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            for fd in fds:
                os.close(fd)
            return None
        self._fds[pid] = tuple(fds)
        return self._fds[pid]

    def rss(self, pid: int) -> int:
        return self.sample(pid)[0]

    def sample(self, pid: int) -> tuple[int, int]:
        """(RSS of the whole tree in bytes, CPU ticks of the leader); (0, 0) if it is gone."""
        fds = self._fds.get(pid) or self._open(pid)
        if fds is None:
            return 0, 0
        try:
            total = int(os.pread(fds[0], 256, 0).split()[1]) * PAGE_SIZE
            stat = os.pread(fds[1], 4096, 0)
            fields = stat[stat.rindex(b")") + 2:].split()
            threads, ticks = int(fields[17]), int(fields[11]) + int(fields[12])
            # The main thread's children file; a multi-threaded leader gets the full walk.
            below = os.pread(fds[2], 4096, 0).split() if threads == 1 else children(pid)
        except (OSError, IndexError, ValueError):
            self.forget(pid)
            return 0, 0
        for child in below:
            total += tree_rss(int(child))
        return total, ticks

    def forget(self, pid: int) -> None:
        for fd in self._fds.pop(pid, ()):
            os.close(fd)

    def close(self) -> None:
        for pid in list(self._fds):
            self.forget(pid)
