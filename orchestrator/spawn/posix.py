"""The spawner's posix_spawn path: vfork+exec for every child that needs no set-up in
Python (no sockets at fds 3.., no user, limits or umask), the program resolved once per
(name, PATH), runs of requests sharing a working directory spread over a few threads
(os.posix_spawn lets go of the GIL while the kernel copies and execs). Runs in the spawner."""

from __future__ import annotations

import os
import threading
import time

from ..procfs import CLOCK_TICKS
from . import cgroups
from .child import _RESET_IN_CHILD
from .request import SpawnRequest

SPAWN_THREADS = max(1, min(4, os.cpu_count() or 1))  # posix_spawn calls at once (see _spawn_run)
PARALLEL_FROM = 8  # requests per thread below which one thread does them all


class PosixStarter:  # pragma: no cover - runs in the spawner; covered by integration tests
    """posix_spawn for the spawner; `cwd` is the spawner's working directory as last set."""

    def __init__(self, devnull: int) -> None:
        self.devnull = devnull
        self.which_cache: dict[tuple[str, str], str] = {}
        self.environ = dict(os.environ)  # read once: os.environ decodes every item per copy
        self.cwd: str | None = None
        self.home = cgroups.detect().memory  # where a thread goes back after a per-thread cgroup join

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
        pid, unknown before). A run of requests sharing a working directory is spread over
        SPAWN_THREADS threads: os.posix_spawn lets go of the GIL while the kernel copies and
        execs, so two cores start two children at once (5,000 sleeps: 3.3 s instead of 6).
        The threads are joined before this returns: every fork (the fork path, zygotes)
        still happens in a single-threaded process."""
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
        def spawn(indexes: list[int]) -> None:
            for i in indexes:
                request, out, err = items[i]
                pids[i] = self._posix_spawn(prepared[i][0], request, prepared[i][1], out, err)
        threads = min(SPAWN_THREADS, len(run) // PARALLEL_FROM)
        if threads <= 1:
            spawn(run)
            return
        helpers = [threading.Thread(target=spawn, args=(run[k::threads],), daemon=True) for k in range(1, threads)]
        for helper in helpers:
            helper.start()
        spawn(run[::threads])
        for helper in helpers:
            helper.join()

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
