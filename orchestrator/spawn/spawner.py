"""The spawner: a small single-threaded helper that forks, execs and reaps every child. A
large run of posix_spawn calls is shared with short-lived forked helpers, one per usable
core, whose children reparent to the spawner, their subreaper (posix.py, _spawn_run).

Why a separate process: Linux ties PR_SET_PDEATHSIG to the *thread* that forked, and code
between fork and exec is unsafe in a process with threads. The master starts this helper
at start-up as a fresh interpreter (fork, then exec: see helper_argv); from then on the
helper starts every child: posix_spawn where it can, fork where the child needs set-up
only it can do (see helper.py). Each child gets its own session, only fds 0-2 and the run's
environment cookie (`ORCH_RUN`); if the helper dies, its guard (guard.py) ends them. The
helper is a child subreaper: it attributes the orphans it inherits to their instance
(trees.py), signals an instance as its whole tree, ends what is left of a tree when its
main process exits, and treats EOF on its socket as "the master is gone": it SIGKILLs
every tree and exits. So a SIGKILLed master still leaves nothing behind.

This module is the master's side; helper.py is the spawner process itself.

Protocol: a SOCK_SEQPACKET socketpair carrying pickled tuples (both ends are ours); pipe fds
for the children's stdout/stderr travel with the spawn requests as SCM_RIGHTS. Listening
sockets travel once, when the master binds them ("sockets"), and stay here under their key
until the master says "close_sockets"; a spawn request names the keys its child gets.
Exec probes ("probe", "probe_kill", answered by "probed") run here too (probe_runner.py).
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import secrets
import socket
import sys
from typing import Any

from .child import MAX_FDS_PER_MESSAGE, buffered_pair, in_batches
from .request import SpawnRequest  # noqa: F401 - part of this module's API

log = logging.getLogger("orch")


class SpawnerClient:
    """The master's end of the spawner."""

    def __init__(self, pid: int, sock: socket.socket, run: str):
        self.pid = pid
        self.sock = sock
        self.run = run
        self.adopted: dict[int, set[int]] = {}  # main pid -> orphans the spawner attributed to it

    @classmethod
    def start(cls, title: str | None = None, run: str | None = None, state: str | None = None,
              fd_limit: tuple[int, int] | None = None) -> "SpawnerClient":
        """Start the spawner: a fresh interpreter (helper_argv) by posix_spawn, so no Python
        runs between fork and exec, and a master that has threads (the config watcher's)
        may start one at any time. `run` is the cookie every child carries as ORCH_RUN (a
        new one by default; keep it when replacing a spawner); `state` the master's state
        file, which the spawner's guard reads if it dies; `fd_limit` the RLIMIT_NOFILE its
        children get (the master's own has been raised). Only fds 0-2 and the socket are
        inheritable; the spawner closes whatever else it was left before anything else."""
        run = run or new_run_id()
        master_end, spawner_end = buffered_pair()
        try:
            os.set_inheritable(spawner_end.fileno(), True)
            argv = helper_argv(title or "orch: spawner", spawner_end.fileno(), run, state, fd_limit)
            # no signal blocked: a master fresh from an upgrade's exec holds some back (handover/carry.py)
            pid = os.posix_spawn(sys.executable, argv, os.environ, setsigmask=())
        except BaseException:
            master_end.close()
            raise
        finally:
            spawner_end.close()
        return cls(pid, master_end, run)

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, requests: list[SpawnRequest], outputs: list[tuple[int, ...]]) -> list[tuple[int, str]]:
        """Ask for these processes; `outputs[i]` is the stdout (and stderr) fd for `requests[i]`:
        (out,), or (out, err) for a separate stderr (then the err fd follows out's).
        Returns (token, reason) for each request that could not be sent (the others are)."""
        failed: list[tuple[int, str]] = []
        for start, end in in_batches(requests):
            try:
                socket.send_fds(self.sock, [pickle.dumps(("spawn", requests[start:end]))],
                                [fd for fds in outputs[start:end] for fd in fds])
            except (OSError, pickle.PicklingError) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    raise  # the spawner is gone: its EOF brings the fleet back
                if end - start > 1:  # one bad request must not fail its neighbours
                    mid = (start + end) // 2
                    failed += self.spawn(requests[start:mid], outputs[start:mid])
                    failed += self.spawn(requests[mid:end], outputs[mid:end])
                else:
                    failed.append((requests[start].token, f"the spawner cannot take this request: {exc}"))
        return failed

    def send_sockets(self, sockets: list[tuple[str, int]]) -> None:
        """Hand listening sockets over, as (key, fd); the spawner keeps its own copies."""
        try:
            for i in range(0, len(sockets), MAX_FDS_PER_MESSAGE):
                chunk = sockets[i:i + MAX_FDS_PER_MESSAGE]
                socket.send_fds(self.sock, [pickle.dumps(("sockets", [key for key, _ in chunk]))],
                                [fd for _, fd in chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the spawner is gone: its EOF starts a new one, which is sent them all

    def close_sockets(self, keys: list[str]) -> None:
        """Drop the spawner's copies of these sockets (no instance will get them again)."""
        if keys:
            try:
                self.sock.send(pickle.dumps(("close_sockets", keys)))
            except (BrokenPipeError, ConnectionResetError):
                pass  # gone, and its copies with it

    def signal(self, orders: list[tuple[int, int, bool]]) -> None:
        """Send signals: (main pid, signal, the instance's whole tree?). Only live, unreaped
        main processes are signalled alone, so a recycled pid can never be hit."""
        if orders:
            self.sock.send(pickle.dumps(("signal", orders)))

    def probe(self, token: int, argv: tuple[str, ...], env: dict[str, str], inherit_env: bool, cwd: str,
              setup: Any, stdin: bytes = b"", output: bool = False) -> None:
        """Run an exec probe (probe_runner.py) as an instance would run: its env, cwd and
        set-up (identity.Setup or None); answered by ("probed", token, wait status or why not).
        Hooks run this way too: `stdin` is what the command reads (a few KiB at most), and
        `output` sends its stdout and stderr to the master's stderr instead of /dev/null."""
        self.sock.send(pickle.dumps(("probe", token, argv, env, inherit_env, cwd, setup, stdin, output)))

    def probe_kill(self, token: int) -> None:
        """End an exec probe's whole process group (its timeout passed, or its instance stopped)."""
        try:
            self.sock.send(pickle.dumps(("probe_kill", token)))
        except OSError:
            pass  # the spawner is gone, and its probes with it

    def retitle(self, title: str) -> None:
        """The spawner's process title (orchestrator.name changed)."""
        self.sock.send(pickle.dumps(("title", title)))

    def state_moved(self, path: str) -> None:
        """The master's state file is at `path` now: the spawner's guard reads it from then on."""
        self.sock.send(pickle.dumps(("state", path)))

    def preload(self, token: int, keys: list[tuple[Any, ...]]) -> None:
        """Start fresh zygotes for these keys (target, pythonpath, set-up) and swap them in
        once all imported (code_reload.py); answered by ("preloaded", token, [errors])."""
        self.sock.send(pickle.dumps(("preload", token, keys)))

    def preload_revert(self, token: int) -> None:
        """The roll onto `token`'s new code halted: fork from the zygotes it replaced again."""
        try:
            self.sock.send(pickle.dumps(("preload_revert", token)))
        except OSError:
            pass

    def preload_abort(self, token: int) -> None:
        """Give up a code reload still importing: its fresh zygotes are closed."""
        try:
            self.sock.send(pickle.dumps(("preload_abort", token)))
        except OSError:
            pass

    def exit(self) -> None:
        """Ask the spawner to kill what is left and exit."""
        try:
            self.sock.send(pickle.dumps(("exit",)))
        except OSError:
            pass

    def receive(self) -> list[tuple[Any, ...]]:
        """Read pending events: ("spawned", [(token, pid)]), ("failed", [(token, error)]),
        ("exec_failed", pid, error), ("exited", [(pid, status)]), ("probed", token, status or
        why not), ("eof",) at the end.
        Orphan bookkeeping ("adopted", "released", "strays") is kept in `adopted` here."""
        events: list[tuple[Any, ...]] = []
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return events
            except ConnectionResetError:
                data = b""
            if not data:
                events.append(("eof",))
                return events
            event = pickle.loads(data)
            if not self._orphans(event):
                events.append(event)

    def _orphans(self, event: tuple[Any, ...]) -> bool:
        """Keep the orphan map in step; True if `event` was only about orphans."""
        kind = event[0]
        if kind == "adopted":
            for leader, orphan in event[1]:
                self.adopted.setdefault(leader, set()).add(orphan)
        elif kind == "released":
            for leader, orphan in event[1]:
                self.adopted.get(leader, set()).discard(orphan)
        elif kind == "strays":
            for pid, command in event[1]:
                log.warning("pid %d (%s) was orphaned to the spawner without an instance cookie: "
                            "it is ended when orch exits", pid, command)
        elif kind == "exited":
            for pid, _ in event[1]:
                self.adopted.pop(pid, None)
            return False
        else:
            return False
        return True

    def orphans(self, pid: int) -> tuple[int, ...]:
        """Orphans attributed to the instance whose main process is `pid`."""
        found = self.adopted.get(pid)
        return tuple(found) if found else ()


def helper_argv(title: str, fd: int, run: str, state: str | None,
                fd_limit: tuple[int, int] | None = None) -> list[str]:
    """The spawner's command line: a fresh interpreter that imports only the spawn modules
    (a fork of the master kept every page the master had touched: 22 MiB at 5,000
    instances, against about 13 for a fresh one). It gets the master's sys.path, so zygotes
    import user code as the master would, and this package's own folder first; the title
    is in the arguments, so ps names the helper before it renames itself."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = os.pathsep.join([root, *sys.path])
    limit = f"{fd_limit[0]}:{fd_limit[1]}" if fd_limit else ""
    return [sys.executable, "-c", _HELPER_MAIN, title, str(fd), run, state or "", limit, paths]


_HELPER_MAIN = ("import gc; gc.disable(); "  # on again once it serves (helper.py: Spawner.run)
                "import os, sys; sys.argv.pop(0); sys.path[:] = sys.argv.pop().split(os.pathsep); "
                "from orchestrator.spawn.helper import main; main()")


def new_run_id() -> str:
    """A cookie unique to one master run: every child carries it as ORCH_RUN."""
    return secrets.token_hex(8)
