"""The spawner's posix_spawn path: vfork+exec for every child that needs no set-up in
Python (no sockets at fds 3.., no user, limits or umask), the program resolved once per
(name, PATH), and a large run of requests sharing a working directory shared out over
short-lived forked helpers, one per usable core (see _spawn_run). Runs in the spawner."""

from __future__ import annotations

import os
import signal
import time

from ..procfs import CLOCK_TICKS
from . import cgroups
from .child import _RESET_IN_CHILD, PR_SET_PDEATHSIG, prctl
from .request import SpawnRequest

MAX_FAN_OUT = 4  # processes posix_spawning one run at once, the spawner included
PARALLEL_FROM = 16  # requests per process below which the spawner does them all itself


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class PosixStarter:  # pragma: no cover - runs in the spawner; covered by integration tests
    """posix_spawn for the spawner; `cwd` is the spawner's working directory as last set."""

    def __init__(self, devnull: int) -> None:
        self.devnull = devnull
        self.which_cache: dict[tuple[str, str], str] = {}
        self.environ = dict(os.environ)  # read once: os.environ decodes every item per copy
        self.cwd: str | None = None
        self.home = cgroups.detect().memory  # where a thread goes back after a per-thread cgroup join
        # Processes a large run is shared over; more than one only once the spawner is a
        # child subreaper (helper.py sets it): the helpers' children must reparent to it.
        self.fan_out = 1

    def executable(self, program: str, env: dict[str, str]) -> str:
        """Resolve the program once per (name, PATH), not by a PATH search in every child."""
        if "/" in program:
            return program
        search = env.get("PATH", os.defpath)
        key = (program, search)
        path = self.which_cache.get(key)
        if path is None:
            found = _which(program, search)
            if found is None:
                return program  # execve fails and the error is reported; not cached
            path = self.which_cache[key] = found
        return path

    def start_all(self, items: list[tuple[SpawnRequest, int, int]]) -> list[tuple[str, dict[str, str], int, int | None]]:
        """(program, env, start-time lower bound, pid or None) per request: posix_spawn where
        it can say everything the child needs (not LISTEN_PID: it must be the child's own
        pid, unknown before). A large run of requests sharing a working directory is shared
        with forked helpers (_spawn_run), all reaped before this returns."""
        prepared: list[tuple[str, dict[str, str]]] = []  # (program, env)
        for request, _, _ in items:
            env = {**self.environ, **request.env} if request.inherit_env else dict(request.env)
            prepared.append((self.executable(request.argv[0], env), env))
        pids: list[int | None] = [None] * len(items)
        sinces = [0] * len(items)
        start = 0
        while start < len(items):
            cwd = items[start][0].cwd
            end = start
            while end < len(items) and items[end][0].cwd == cwd:
                end += 1
            # A lower bound of the children's /proc start times (CLOCK_BOOTTIME, in ticks):
            # reading /proc/PID/stat of a process mid-exec cost 0.15 ms a child here.
            sinces[start:end] = [int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS)] * (end - start)
            run = [i for i in range(start, end)
                   if not items[i][0].sockets and items[i][0].setup is None
                   and (items[i][0].cgroup is None or items[i][0].cgroup.per_thread)]
            if run and self._enter(cwd):
                self._spawn_run(run, items, prepared, pids)
            start = end
        return [(program, env, since, pid) for (program, env), since, pid in zip(prepared, sinces, pids)]

    def _enter(self, cwd: str) -> bool:
        """chdir for the next spawns (posix_spawn has no cwd of its own in Python)."""
        if cwd == self.cwd:
            return True
        try:
            self.cwd = None
            os.chdir(cwd)
        except OSError:
            return False  # the fork path reports the missing folder
        self.cwd = cwd
        return True

    def _spawn_run(self, run: list[int], items: list[tuple[SpawnRequest, int, int]],
                   prepared: list[tuple[str, dict[str, str]]], pids: list[int | None]) -> None:
        """posix_spawn a run, shared with `fan_out - 1` forked helpers: each helper takes
        every n-th request, reports the pids and exits, and the children it started
        reparent to the spawner, their subreaper, which reaps them as its own. Processes,
        not threads: two threads calling posix_spawn in one process were no faster than one
        here (2,000 sleeps in batches of 64, 2 cores: 5.4-6.4 s with two threads, 5.4-6.8 s
        with one, 3.3-4.4 s with a forked helper beside the spawner). The spawner stays
        single-threaded, and every helper is reaped before this returns."""
        count = min(self.fan_out, len(run) // PARALLEL_FROM)
        if count <= 1:
            self._spawn_share(run, items, prepared, pids)
            return
        helpers: list[tuple[int, int, list[int]]] = []  # (pid, read end of its report, its share)
        for k in range(1, count):
            helper = self._fork_helper(run[k::count], items, prepared, [fd for _, fd, _ in helpers])
            if helper is None:
                self._spawn_share(run[k::count], items, prepared, pids)  # no fork: do it here
            else:
                helpers.append(helper)
        self._spawn_share(run[::count], items, prepared, pids)
        for pid, fd, share in helpers:
            _collect(pid, fd, share, pids)

    def _spawn_share(self, share: list[int], items: list[tuple[SpawnRequest, int, int]],
                     prepared: list[tuple[str, dict[str, str]]], pids: list[int | None]) -> None:
        for i in share:
            request, out, err = items[i]
            pids[i] = self._posix_spawn(prepared[i][0], request, prepared[i][1], out, err)

    def _fork_helper(self, share: list[int], items: list[tuple[SpawnRequest, int, int]],
                     prepared: list[tuple[str, dict[str, str]]], others: list[int]) -> tuple[int, int, list[int]] | None:
        """Fork a helper that posix_spawns `share` and writes "index pid" lines, one per
        child as it starts (a helper killed half-way has said which it started); None if
        the fork fails. `others` are the report pipes of earlier helpers, closed in this one
        so each pipe's end comes with its own helper's exit."""
        read_end, write_end = os.pipe()  # close-on-exec: no child inherits either end
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            return None
        if pid == 0:  # pragma: no cover - the helper: only posix_spawn calls, then _exit
            code = 1
            try:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a SIGKILLed spawner takes it along
                if os.getppid() == parent:
                    for fd in (read_end, *others):
                        os.close(fd)
                    for i in share:
                        request, out, err = items[i]
                        child = self._posix_spawn(prepared[i][0], request, prepared[i][1], out, err)
                        if child is not None:
                            os.write(write_end, b"%d %d\n" % (i, child))
                    code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        return pid, read_end, share

    def _posix_spawn(self, program: str, request: SpawnRequest, env: dict[str, str], out: int,
                     err: int) -> int | None:
        """vfork+exec: its own session, default signals and an empty mask, stdin from
        /dev/null, stdout to `out` and stderr to `err`; every other fd of ours is close-on-exec. The
        working directory is ours, set by _enter before the run. No PDEATHSIG: the guard
        stands in for it. None when posix_spawn refuses: the fork path then says why."""
        try:
            if request.cgroup is not None:  # this thread joins the child's v1 cgroup; the child inherits it
                cgroups.join(request.cgroup)
            return os.posix_spawn(program, list(request.argv), env, setsid=True, setsigdef=_RESET_IN_CHILD,
                                  setsigmask=(), file_actions=[(os.POSIX_SPAWN_DUP2, self.devnull, 0),
                                                               (os.POSIX_SPAWN_DUP2, out, 1),
                                                               (os.POSIX_SPAWN_DUP2, err, 2)])
        except Exception:  # noqa: BLE001 - in a helper thread too: never lost, the fork path retries
            return None
        finally:
            if request.cgroup is not None:
                cgroups.leave(self.home)


def _which(program: str, search: str) -> str | None:
    """shutil.which, without importing shutil (and its compression modules) in the spawner."""
    for folder in search.split(os.pathsep):
        path = os.path.join(folder or os.curdir, program)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _collect(pid: int, fd: int, share: list[int], pids: list[int | None]) -> None:
    """Read a helper's report to its end (its exit), then reap it. A request it did not
    report stays None: the fork path starts it (and says why if it cannot)."""
    chunks = []
    while True:
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    os.waitpid(pid, 0)
    allowed = set(share)
    for line in b"".join(chunks).split(b"\n"):
        fields = line.split()
        if len(fields) == 2 and int(fields[0]) in allowed:
            pids[int(fields[0])] = int(fields[1])
