"""Instances in control groups of their own (`[orchestrator] cgroup = "auto"`).

Where the kernel lets us, an instance with a `memory` limit runs in a cgroup of its own,
which a double-forked daemon that clears its environment and leaves its session cannot
leave either: it ends with its instance (`cgroup.kill` in v2, each member in v1).
- With the v1 memory controller, that cgroup also holds the limit: `memory.limit_in_bytes`
  is `hard` (the kernel reclaims cache, then holds the group's allocations and tells us)
  and a usage threshold at `soft` wakes the master through an eventfd, so nothing is
  sampled while every instance stays under its limits (supervise/kernel_memory.py).
- Without it (a cgroup2-only host), the cgroup is in the unified hierarchy, for
  membership only; memory is sampled (the v2 memory controller is not used yet).

The child joins before it execs (the spawner's fork path calls `join` first thing), so not
even its first fork happens outside. Every cgroup of one master run lives under
`orch-<run>` beside the master's own cgroup, which is what the next master, or the guard
of a SIGKILLed spawner, sweeps (`sweep`). Parsing is pure and table-tested; the rest is
thin file I/O on cgroupfs.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from typing import Callable, NamedTuple

UNIFIED = "unified"
MEMORY = "memory"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")
_MAX_NAME = 200


class Layout(NamedTuple):
    """Our own cgroup directories, by what they are used for (None: not available)."""

    unified: str | None  # v2: membership, cgroup.kill
    memory: str | None  # v1 memory controller: usage, limit, thresholds


class Join(NamedTuple):
    """What a child does before exec: make `dirs`, write each (file, value), join each dir.
    `per_thread`: every dir is a v1 one, which a spawner thread may join for the child it
    posix_spawns next (see `leave`), so the child needs no fork."""

    dirs: tuple[str, ...]
    writes: tuple[tuple[str, str], ...] = ()
    per_thread: bool = False


def parse_layout(proc_cgroup: str, mountinfo: str) -> Layout:
    """Our v2 and v1-memory cgroup directories from /proc/self/cgroup and /proc/self/mountinfo
    (pure). A mount shows the hierarchy from its root (field 4): our path is taken relative to it."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        number, controllers, path = parts
        if number == "0" and controllers == "":
            paths[UNIFIED] = path
        elif MEMORY in controllers.split(","):
            paths[MEMORY] = path
    mounts: dict[str, tuple[str, str]] = {}  # kind -> (mount root, mount point)
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if len(fields) < dash + 4 or len(fields) < 5:
            continue
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            mounts.setdefault(UNIFIED, (root, point))
        elif fstype == "cgroup" and MEMORY in options:
            mounts.setdefault(MEMORY, (root, point))
    found: dict[str, str | None] = {UNIFIED: None, MEMORY: None}
    for kind, path in paths.items():
        if kind not in mounts:
            continue
        root, point = mounts[kind]
        if root != "/" and (path == root or path.startswith(root + "/")):
            path = path[len(root):] or "/"
        elif root != "/":
            continue  # our cgroup is outside what this mount shows
        found[kind] = os.path.normpath(point + "/" + path.lstrip("/"))
    return Layout(found[UNIFIED], found[MEMORY])


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def leaf_name(instance: str, token: int) -> str:
    """A cgroup directory name for one start of `instance` (pure): file-safe, unique per
    start, never one of the kernel's own names (which all contain a dot after a word)."""
    safe = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
                       instance)[:_MAX_NAME]
    return f"i-{safe}-{token}"


def run_name(run: str, master: tuple[int, int] | None = None) -> str:
    """`orch-<pid>.<start ticks>-<run>` of the master that made it (so a later master can
    tell a dead run's directory from a live one), or just the suffix to match (pure)."""
    tail = _UNSAFE.sub("_", run)
    return f"orch-{master[0]}.{master[1]}-{tail}" if master else f"-{tail}"


def run_owner(name: str) -> tuple[int, int] | None:
    """(pid, start ticks) of the master a run directory's name says made it (pure)."""
    match = re.fullmatch(r"orch-(\d+)\.(\d+)-.+", name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def detect() -> Layout:
    """This process's layout, read from /proc."""
    try:
        with open("/proc/self/cgroup") as f:
            cgroup = f.read()
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    except OSError:
        return Layout(None, None)
    return parse_layout(cgroup, mountinfo)


def make_run_dirs(layout: Layout, run: str, master: tuple[int, int]) -> tuple[Layout, list[str]]:
    """Create this run's directory where we may: (the run's layout, why a hierarchy is not
    used). The v1 memory hierarchy, where there is one, holds membership too, and then no
    v2 directory is made: a process joins a v1 cgroup through `tasks`, which moves only
    the calling thread and takes no global lock, while every write to a v2 cgroup.procs
    takes the lock every fork in the system waits for, and holds it for an RCU grace period
    (0.4 ms here alone; under load 1,000 such starts took over 30 s, the spawner's own forks
    queued behind them; bench/RESULTS.md). Without it, v2 gives membership and cgroup.kill."""
    made: dict[str, str | None] = {UNIFIED: None, MEMORY: None}
    why = []
    for kind, base in ((MEMORY, layout.memory), (UNIFIED, layout.unified)):
        if kind == UNIFIED and made[MEMORY] is not None:
            break
        if base is None:
            why.append(f"no {'cgroup2 (unified)' if kind == UNIFIED else 'v1 memory'} hierarchy is mounted")
            continue
        path = os.path.join(base, run_name(run, master))
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            why.append(f"cannot create {path}: {exc.strerror}")
            continue
        made[kind] = path
    return Layout(made[UNIFIED], made[MEMORY]), why


def join_plan(run: Layout, instance: str, token: int, hard: int | None) -> Join:
    """What the child of one start does to be in its instance's cgroups (pure)."""
    leaf = leaf_name(instance, token)
    dirs = tuple(os.path.join(base, leaf) for base in run if base is not None)
    writes: tuple[tuple[str, str], ...] = ()
    if run.memory is not None and hard:
        writes = ((os.path.join(run.memory, leaf, "memory.limit_in_bytes"), str(hard)),)
    return Join(dirs, writes, per_thread=run.unified is None and run.memory is not None)


def join(plan: Join) -> None:
    """In the child, before exec: make the directories, set the limit, move in. A single-
    threaded process joins a v1 hierarchy through `tasks` (no whole-group lock: 0.13 ms
    against 0.4 ms here), v2 only through cgroup.procs."""
    for path in plan.dirs:
        os.makedirs(path, 0o755, exist_ok=True)  # the run's own too, should it have been removed
    for path, value in plan.writes:
        _write(path, value)
    for path in plan.dirs:
        tasks = os.path.join(path, "tasks")
        _write(tasks if os.path.exists(tasks) else os.path.join(path, "cgroup.procs"), "0")


def leave(home: str | None) -> None:
    """In a spawner thread that `join`ed a v1 cgroup for its next posix_spawn: back into
    `home`, the spawner's own (v1 cgroups are per thread: the child inherits the calling
    thread's, and a thread moving itself through `tasks` takes no global lock)."""
    if home is not None:
        _write(os.path.join(home, "tasks"), "0")


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def members(path: str) -> list[int]:
    """Pids in the cgroup at `path` and every cgroup below it."""
    pids: list[int] = []
    for folder, _, _ in os.walk(path):
        try:
            with open(os.path.join(folder, "cgroup.procs")) as f:
                pids += [int(line) for line in f.read().split()]
        except (OSError, ValueError):
            continue
    return pids


def kill(path: str) -> None:
    """SIGKILL every process in the cgroup at `path` and below: `cgroup.kill` where the kernel
    has it (5.14+, v2), else each member (v1) - a member that forks meanwhile is caught by the
    callers' retries, since the cgroup holds its children too."""
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
        return
    except FileNotFoundError:
        if not os.path.isdir(path):
            return
    except OSError:
        pass
    for pid in members(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def remove(path: str) -> bool:
    """rmdir the cgroup at `path` and every cgroup below it, deepest first; False while some
    still has members (not yet reaped)."""
    clean = True
    for folder, _, _ in sorted(os.walk(path), key=lambda entry: -entry[0].count("/")):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            clean = False
    return clean


def sweep(paths: list[str], timeout: float = 2.0) -> int:
    """End every process left in these cgroups and remove them (a dead run's directories);
    returns how many processes were found."""
    found = sum(len(members(p)) for p in paths if os.path.isdir(p))
    deadline = time.monotonic() + timeout
    left = [p for p in paths if os.path.isdir(p)]
    while left:
        for path in left:
            kill(path)
        left = [p for p in left if not remove(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)  # killed members need a moment to be reaped by their parents
    return found


def run_paths(layout: Layout, run: str) -> list[str]:
    """Where run `run` keeps its cgroups, in this layout (beside our own cgroups)."""
    return [os.path.join(base, name) for base in layout if base is not None
            for name in _names(base) if name.startswith("orch-") and name.endswith(run_name(run))]


def stale_paths(layout: Layout, alive: Callable[[int, int], bool]) -> list[str]:
    """Run directories beside our own cgroups whose master is gone (`alive(pid, ticks)`
    says whether that process still runs): what a master, spawner and guard killed
    together left (the OOM killer, a test's teardown)."""
    found = []
    for base in layout:
        for name in _names(base) if base is not None else ():
            owner = run_owner(name)
            if owner is not None and not alive(*owner):
                found.append(os.path.join(base, name))
    return found


def _names(base: str) -> list[str]:
    try:
        return os.listdir(base)
    except OSError:
        return []


def sweep_run(run: str, timeout: float = 1.0) -> int:
    """`sweep` the cgroups of run `run` beside this process's own (the spawner's and the
    guard's are the master's): what a master that died, or just ended, left there."""
    return sweep(run_paths(detect(), run), timeout)
