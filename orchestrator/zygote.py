"""The zygote: imports a Python worker's target once, then forks workers from itself.

Started by the spawner (single-threaded, so forking it is safe) for each preloaded
target; workers forked from it skip the interpreter start-up and imports and share the
imported code copy-on-write. It speaks the spawner's protocol in miniature: ("fork",
[(token, request)]) with fds in, ("spawned", ...), ("exited", ...) and ("import_failed",
error) out. It dies with the spawner (PDEATHSIG), and its workers die with it.
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import socket
import sys
import traceback
from typing import Any

from .spawner import PR_SET_PDEATHSIG, _set_title, kill_group, prctl, prepare_child, reaped, receive


def start_zygote(target: str, pythonpath: tuple[str, ...]) -> tuple[int, socket.socket]:
    """Fork a zygote for `target` (in the spawner); returns (pid, socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the zygote
        code = 1
        try:
            ours.close()
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _set_title(f"orch: zygote {target}")
            code = _Zygote(theirs, target, pythonpath).run()
        finally:
            os._exit(code)
    theirs.close()
    return pid, ours


class _Zygote:  # pragma: no cover - runs in the zygote; covered by integration tests
    def __init__(self, sock: socket.socket, target: str, pythonpath: tuple[str, ...]):
        self.sock = sock
        self.target = target
        self.pythonpath = pythonpath
        self.children: set[int] = set()
        self.devnull = os.open(os.devnull, os.O_RDWR)
        os.set_inheritable(self.devnull, False)

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.sock.send(pickle.dumps(message))
        except OSError:
            pass

    def run(self) -> int:
        from .worker import load_target
        try:
            self.cls = load_target(self.target, list(self.pythonpath))
        except BaseException as exc:  # noqa: BLE001 - report any import failure, then exit
            self._send(("import_failed", f"cannot import {self.target}: {exc!r}"))
            return 1
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        self.wake = (wake_r, wake_w)
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "spawner")
        selector.register(wake_r, selectors.EVENT_READ, "sigchld")
        while True:
            for key, _ in selector.select():
                if key.data == "spawner":
                    if not self._from_spawner():
                        for pid in self.children:
                            kill_group(pid)
                        return 0
                else:
                    try:
                        wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                    self._reap()

    def _from_spawner(self) -> bool:
        received = receive(self.sock)
        if received is None:
            return False
        message, fds = received
        if not message:
            return True
        items = message[1]
        spawned, failed = [], []
        for (token, request), out in zip(items, fds):
            try:
                spawned.append((token, self._fork(request, out)))
            except OSError as exc:
                failed.append((token, f"fork failed: {exc.strerror}"))
            os.close(out)
        if spawned:
            self._send(("spawned", spawned))
        if failed:
            self._send(("failed", failed))
        return True

    def _fork(self, request: Any, out: int) -> int:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.children.add(pid)
            return pid
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sock in (self.sock, *self.wake):
                sock.close()
            prepare_child(parent, self.devnull, out, request.cwd)
            os.close(out)
            env = {**os.environ, **request.env} if request.inherit_env else dict(request.env)
            os.environ.clear()
            os.environ.update(env)
            sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
            sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
            from .worker import main
            code = main(list(request.argv[3:]), self.cls)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _reap(self) -> None:
        exited = []
        for pid, status in reaped():
            if pid in self.children:
                self.children.discard(pid)
                kill_group(pid)
                exited.append((pid, status))
        if exited:
            self._send(("exited", exited))
