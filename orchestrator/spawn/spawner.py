"""The spawner: a small single-threaded helper that forks, execs and reaps every child.

Why a separate process: Linux ties PR_SET_PDEATHSIG to the *thread* that forked, and code
between fork and exec is unsafe in a process with threads (the master has the file watcher's
thread). The master forks this helper at start-up, before any thread exists; from then on
the helper does every fork. Each child gets its own process group and PDEATHSIG=SIGKILL, so
it dies with the helper. The helper is a child subreaper and treats EOF on its socket as
"the master is gone": it SIGKILLs every child's process group (grandchildren included) and
exits. So a SIGKILLed master still leaves nothing behind.

Protocol: a SOCK_SEQPACKET socketpair carrying pickled tuples (both ends are ours); pipe fds
for the children's stdout/stderr travel with the spawn requests as SCM_RIGHTS. Listening
sockets travel once, when the master binds them ("sockets"), and stay here under their key
until the master says "close_sockets"; a spawn request names the keys its child gets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import selectors
import shutil
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from .child import (_COORDINATED, MAX_EVENTS_PER_MESSAGE, MAX_FDS_PER_MESSAGE, PR_SET_CHILD_SUBREAPER,
                    kill_group, listen_env, prctl, prepare_child, reaped, receive, set_title)


@dataclass(frozen=True)
class SpawnRequest:
    """One process to start. `env` is the full environment, or overrides on the inherited one."""

    token: int
    argv: tuple[str, ...]
    env: dict[str, str]
    inherit_env: bool
    cwd: str
    preload: tuple[str, tuple[str, ...]] | None = None  # (target, pythonpath): fork from a zygote
    sockets: tuple[tuple[str, str], ...] = ()  # (name, key) of held sockets, for fds 3, 4, ...


class SpawnerClient:
    """The master's end of the spawner."""

    def __init__(self, pid: int, sock: socket.socket):
        self.pid = pid
        self.sock = sock

    @classmethod
    def start(cls, title: str | None = None, close: tuple[int, ...] = ()) -> "SpawnerClient":
        """Fork the spawner. Call before any thread is started. `close`: the master's fds the
        spawner must not keep (sockets adopted from systemd reach it with "sockets" instead)."""
        master_end, spawner_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (master_end, spawner_end):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 2**20)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper
            code = 0
            try:
                master_end.close()
                for fd in close:
                    os.close(fd)
                if title:
                    set_title(title)
                _Spawner(spawner_end).run()
            except BaseException:  # noqa: BLE001 - the helper must never return into the master's code
                import traceback
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        spawner_end.close()
        return cls(pid, master_end)

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, requests: list[SpawnRequest], outputs: list[int]) -> None:
        """Ask for these processes; `outputs[i]` is the stdout/stderr fd for `requests[i]`."""
        for i in range(0, len(requests), MAX_FDS_PER_MESSAGE):
            chunk = requests[i:i + MAX_FDS_PER_MESSAGE]
            fds = outputs[i:i + MAX_FDS_PER_MESSAGE]
            socket.send_fds(self.sock, [pickle.dumps(("spawn", chunk))], fds)

    def send_sockets(self, sockets: list[tuple[str, int]]) -> None:
        """Hand listening sockets over, as (key, fd); the spawner keeps its own copies."""
        for i in range(0, len(sockets), MAX_FDS_PER_MESSAGE):
            chunk = sockets[i:i + MAX_FDS_PER_MESSAGE]
            socket.send_fds(self.sock, [pickle.dumps(("sockets", [key for key, _ in chunk]))],
                            [fd for _, fd in chunk])

    def close_sockets(self, keys: list[str]) -> None:
        """Drop the spawner's copies of these sockets (no instance will get them again)."""
        if keys:
            self.sock.send(pickle.dumps(("close_sockets", keys)))

    def signal(self, orders: list[tuple[int, int, bool]]) -> None:
        """Send signals: (pid, signal, whole process group?). Only live, unreaped children are
        signalled, so a recycled pid can never be hit."""
        if orders:
            self.sock.send(pickle.dumps(("signal", orders)))

    def exit(self) -> None:
        """Ask the spawner to kill what is left and exit."""
        try:
            self.sock.send(pickle.dumps(("exit",)))
        except OSError:
            pass

    def receive(self) -> list[tuple[Any, ...]]:
        """Read pending events: ("spawned", [(token, pid)]), ("failed", [(token, error)]),
        ("exec_failed", pid, error), ("exited", [(pid, status)]). Empty list means EOF."""
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
            events.append(pickle.loads(data))


class _Spawner:  # pragma: no cover - runs in the helper process; covered by integration tests
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.children: set[int] = set()
        self.errpipes: dict[int, int] = {}  # errpipe read fd -> pid
        self.pid_errpipe: dict[int, int] = {}
        self.selector = selectors.DefaultSelector()
        self._which: dict[tuple[str, str], str] = {}
        self.sockets: dict[str, int] = {}  # listening sockets held for children, by key
        from .zygote import ZygotePool  # zygote.py builds on this module's helpers
        self.zygotes = ZygotePool(self.selector, self._send, self.sockets)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        os.set_inheritable(self.devnull, False)

    def run(self) -> None:
        for signum in _COORDINATED:
            signal.signal(signum, signal.SIG_IGN)
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
        except OSError:
            pass
        self.selector.register(self.sock, selectors.EVENT_READ, "master")
        self.selector.register(wake_r, selectors.EVENT_READ, "sigchld")
        while True:
            for key, _ in self.selector.select():
                if self.selector.get_map().get(key.fd) is not key:
                    continue  # handled earlier in this batch (an errpipe closed while reaping)
                try:
                    if key.data == "master":
                        if not self._from_master():
                            self._kill_everything()
                            return
                    elif isinstance(key.data, tuple):  # ("zygote", handle)
                        self.zygotes.readable(key.data[1])
                    elif key.data == "sigchld":
                        try:
                            wake_r.recv(4096)
                        except BlockingIOError:
                            pass
                        self._reap()
                    else:
                        self._errpipe_ready(key.fd)
                except Exception:  # noqa: BLE001 - one bad event must not orphan the fleet
                    import traceback
                    traceback.print_exc()

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.sock.send(pickle.dumps(message))
        except OSError:
            pass  # the master is gone; EOF will follow

    def _from_master(self) -> bool:
        received = receive(self.sock)
        if received is None:
            return False
        message, fds = received
        if not message:
            return True
        if message[0] == "sockets":
            for key, fd in zip(message[1], fds):
                os.set_inheritable(fd, False)
                old = self.sockets.pop(key, None)
                if old is not None:
                    os.close(old)
                self.sockets[key] = fd
            return True
        if message[0] == "close_sockets":
            for key in message[1]:
                fd = self.sockets.pop(key, None)
                if fd is not None:
                    os.close(fd)
        elif message[0] == "spawn":
            self._spawn_all(message[1], fds)
        elif message[0] == "signal":
            for pid, signum, group in message[1]:
                self._signal(pid, signum, group)
        elif message[0] == "exit":
            return False
        for fd in fds:
            os.close(fd)
        return True

    def _signal(self, pid: int, signum: int, group: bool) -> None:
        try:
            if group:
                os.killpg(pid, signum)  # the group outlives its leader while members remain
            elif pid in self.children or pid in self.zygotes.children:
                os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _spawn_all(self, requests: list[SpawnRequest], fds: list[int]) -> None:
        spawned, failed = [], []
        preloaded: dict[tuple[str, tuple[str, ...]], list[tuple[SpawnRequest, int]]] = {}
        for request, out in zip(requests, fds):
            if request.preload is not None:
                preloaded.setdefault(request.preload, []).append((request, out))
                continue
            try:
                spawned.append((request.token, self._spawn_one(request, out)))
            except KeyError as exc:
                failed.append((request.token, f"socket {exc.args[0]} is not held by the spawner"))
            except OSError as exc:
                failed.append((request.token, f"fork failed: {exc.strerror}"))
        for key, items in preloaded.items():
            failed += self.zygotes.fork(key, items)
        if spawned:
            self._send(("spawned", spawned))
        if failed:
            self._send(("failed", failed))

    def _executable(self, program: str, env: dict[str, str]) -> str:
        """Resolve the program once per (name, PATH), not by a PATH search in every child."""
        if "/" in program:
            return program
        search = env.get("PATH", os.defpath)
        key = (program, search)
        path = self._which.get(key)
        if path is None:
            found = shutil.which(program, path=search)
            if found is None:
                return program  # execve fails and the error is reported; not cached
            path = self._which[key] = found
        return path

    def _spawn_one(self, request: SpawnRequest, out: int) -> int:
        env = {**os.environ, **request.env} if request.inherit_env else dict(request.env)
        program = self._executable(request.argv[0], env)
        sockets = [self.sockets[key] for _, key in request.sockets]
        err_r, err_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                if sockets:  # keep the exec-error pipe out of the range the sockets go to
                    err_w = fcntl.fcntl(err_w, fcntl.F_DUPFD_CLOEXEC, 3 + len(sockets))
                prepare_child(parent, self.devnull, out, request.cwd, sockets)
                if request.sockets:
                    env.update(listen_env([name for name, _ in request.sockets]))
                os.execve(program, list(request.argv), env)
            except BaseException as exc:  # noqa: BLE001
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
                detail = f"{request.argv[0]}: {text}"
                if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTDIR) \
                        and not os.path.isdir(request.cwd):
                    detail = f"cwd {request.cwd}: {text}"
                try:
                    os.write(err_w, detail.encode(errors="replace")[:1000])
                finally:
                    os._exit(127)
        os.close(err_w)
        os.set_blocking(err_r, False)
        self.children.add(pid)
        self.errpipes[err_r] = pid
        self.pid_errpipe[pid] = err_r
        self.selector.register(err_r, selectors.EVENT_READ, "errpipe")
        return pid

    def _errpipe_ready(self, fd: int) -> None:
        try:
            data = os.read(fd, 1024)
        except BlockingIOError:
            return  # the child has not exec'd yet
        pid = self.errpipes.pop(fd)
        self.pid_errpipe.pop(pid, None)
        self.selector.unregister(fd)
        os.close(fd)
        if data:
            self._send(("exec_failed", pid, data.decode(errors="replace")))

    def _reap(self) -> None:
        exited = []
        for pid, status in reaped():
            if pid not in self.children:
                continue  # an orphaned grandchild, reparented to us as subreaper
            self.children.discard(pid)
            errpipe = self.pid_errpipe.get(pid)
            if errpipe is not None:
                self._errpipe_ready(errpipe)
            kill_group(pid)  # what the leader left in its group: no grandchild outlives its worker
            exited.append((pid, status))
            if len(exited) >= MAX_EVENTS_PER_MESSAGE:
                self._send(("exited", exited))
                exited = []
        if exited:
            self._send(("exited", exited))

    def _kill_everything(self) -> None:
        """Master gone: SIGKILL every group, then any orphan reparented to us, and reap all."""
        for pid in list(self.children) + list(self.zygotes.children):
            kill_group(pid)
        while True:
            remaining = _direct_children()
            for pid in remaining:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return
            if not remaining:
                return
            time.sleep(0.002)  # SIGKILLed children need a moment before they can be reaped


def _direct_children() -> list[int]:  # pragma: no cover - runs in the helper
    me = os.getpid()
    pids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids
