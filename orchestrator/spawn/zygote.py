"""The zygote: imports a Python worker's target once, then forks workers from itself.

Started by the spawner (single-threaded, so forking it is safe) for each preloaded
target; workers forked from it skip the interpreter start-up and imports and share the
imported code copy-on-write. It speaks the spawner's protocol in miniature: ("fork",
[(token, request)], socket keys) in, with the output fds and then those keys' listening
sockets as SCM_RIGHTS; ("spawned", ...), ("exited", ...) and ("import_failed", error) out. It dies with the spawner (PDEATHSIG), and its workers die with it.
"""

from __future__ import annotations

import importlib
import os
import pickle
import selectors
import signal
import socket
import sys
from typing import Any, Callable

from .child import (PR_SET_PDEATHSIG, RECEIVE_BYTES, buffered_pair, close_fds, in_batches, kill_group,
                    listen_env, prctl, prepare_child, reaped, receive, request_bytes)
from .code_reload import CodeReloads
from .identity import apply_setup
from .request import fd_count, with_outputs
from ..title import set_title
from ..wakeup import wakeup_pair


def start_zygote(target: str, pythonpath: tuple[str, ...], setup: Any = None) -> tuple[int, socket.socket]:
    """Fork a zygote for `target` (in the spawner); returns (pid, socket). It keeps no fd of
    the spawner's (pipes, listening sockets): it never execs to drop them. With a `setup`
    (identity.Setup) it takes on those limits, umask and user before importing anything of
    the target's: user code never runs as root, and every worker it forks inherits them."""
    ours, theirs = buffered_pair()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the zygote
        code = 1
        try:
            ours.close()
            close_fds(theirs.fileno())  # the spawner's sockets and pipes are not the zygote's
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if setup is not None:
                from ..worker import runtime  # noqa: F401 - orch's own code, imported while still root
                try:
                    apply_setup(setup, parent)
                except OSError as exc:  # said as the zygote's failure, like an import error
                    theirs.send(pickle.dumps(("import_failed", f"preload zygote: {exc.strerror or exc}")))
                    raise
            set_title(f"orch: zygote {target}")
            code = _Zygote(theirs, target, pythonpath).run()
        finally:
            os._exit(code)
    theirs.close()
    return pid, ours


def import_error(target: str, exc: BaseException) -> str:
    """One line saying why `target` did not import, located in the user's file: the file and
    line of a SyntaxError, else of the innermost frame outside orch and importlib."""
    import traceback
    if isinstance(exc, SyntaxError) and exc.filename:
        where, text = f"{exc.filename}:{exc.lineno}", f"SyntaxError: {exc.msg}"
    else:
        ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith(("<", ours))]
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        text = f"{type(exc).__name__}: {exc}"
    return f"cannot import {target}: {where + ': ' if where else ''}{text}"


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
        from ..worker.runtime import load_target
        try:
            # What the spawner's own imports cached is stale here: a sys.path folder missing
            # when it started stays "no such folder" (a None in sys.path_importer_cache),
            # and folder listings may predate the fix. Without this, every zygote after a
            # missing dependency was installed failed the same way until a master restart.
            importlib.invalidate_caches()
            # No .pyc written here: a .pyc records its source's mtime in whole seconds, so one
            # written now would be taken for current by a code reload after a same-size save
            # within the same second (code_watch), which would then import the old code.
            sys.dont_write_bytecode = True
            self.cls = load_target(self.target, list(self.pythonpath))
        except BaseException as exc:  # noqa: BLE001 - report any import failure, then exit
            self._send(("import_failed", import_error(self.target, exc)))
            return 1
        self._send(("imported",))  # a code reload waits for this before any instance moves
        signal.signal(signal.SIGCHLD, lambda *_: None)
        wake_r, wake_w = wakeup_pair()
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
        # The listening sockets come after the outputs (two fds for a separate stderr), once
        # per message; ours only while forking.
        outputs = sum(fd_count(request) for _, request in items)
        sockets = dict(zip(message[2], fds[outputs:]))
        spawned, failed = [], []
        for request, out, err in with_outputs([r for _, r in items], fds, self.devnull):
            try:
                spawned.append((request.token, self._fork(request, out, err, sockets)))
            except OSError as exc:
                failed.append((request.token, f"fork failed: {exc.strerror}"))
            os.close(out)
            if fd_count(request) == 2:
                os.close(err)
        for fd in sockets.values():
            os.close(fd)
        if spawned:
            self._send(("spawned", spawned))
        if failed:
            self._send(("failed", failed))
        return True

    def _fork(self, request: Any, out: int, err: int, sockets: dict[str, int]) -> int:
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
            mine = [sockets[key] for _, key in request.sockets]
            prepare_child(parent, self.devnull, out, request.cwd, mine, err=err)  # closes every other fd above 2
            env = {**os.environ, **request.env} if request.inherit_env else dict(request.env)
            if request.sockets:
                env.update(listen_env([name for name, _ in request.sockets]))
            os.environ.clear()
            os.environ.update(env)
            sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
            sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
            from ..worker.runtime import main
            code = main(list(request.argv[3:]), self.cls)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001
            import traceback
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


class ZygotePool:  # pragma: no cover - runs in the spawner; covered by integration tests
    """The spawner's zygotes, one per preloaded (target, pythonpath), started on first use.

    A zygote whose import failed, or that died, is never sent work again: the next start
    of its template builds a new one, which imports the code as it is on disk then."""

    def __init__(self, selector: selectors.BaseSelector, send: Callable[[tuple[Any, ...]], None],
                 started: Callable[[int, str | None], None], exited: Callable[[int], None],
                 sockets: dict[str, int]):
        self.selector = selector
        self.send = send  # to the master
        self.started = started  # (pid, instance name): a worker is running
        self.exited = exited  # (pid): a worker ended; its leftovers are the spawner's to end
        self.sockets = sockets  # the spawner's held listening sockets, by key
        self.zygotes: dict[tuple[str, tuple[str, ...]], ZygoteHandle] = {}  # the ones to fork from
        self.retired: set[ZygoteHandle] = set()  # failed or dead, until their socket's EOF
        self.children: dict[int, ZygoteHandle] = {}  # worker pid -> the zygote that forked it
        self.reloads = CodeReloads(self, start_zygote, ZygoteHandle)  # `orch reload --code`
        self.closing: set[int] = set()  # pids of zygotes we closed, until they are reaped

    def pids(self) -> list[int]:
        """The zygotes' own pids (direct children of the spawner, not orphans), fresh ones too."""
        if self.closing:
            self.closing = {pid for pid in self.closing if os.path.exists(f"/proc/{pid}")}
        fresh = [z.pid for zs in self.reloads.pending.values() for z in zs]
        return [zygote.pid for zygote in (*self.zygotes.values(), *self.retired)] + fresh + list(self.closing)

    def close(self, zygote: "ZygoteHandle") -> None:
        """Close our end: the zygote ends its workers (it has none when we do this) and exits."""
        if zygote.closed:
            return
        zygote.closed = True
        self.selector.unregister(zygote.sock)
        zygote.sock.close()
        self.retired.discard(zygote)
        if self.zygotes.get(zygote.key) is zygote:
            del self.zygotes[zygote.key]
        self.closing.add(zygote.pid)

    def close_if_idle(self, zygote: "ZygoteHandle") -> None:
        """A zygote a code reload replaced goes once its last worker is gone."""
        if zygote.replaced and not zygote.children and not zygote.pending:
            self.close(zygote)

    def fork(self, key: tuple[Any, ...], items: list[tuple[Any, int, int]]) -> list[tuple[int, str]]:
        """Ask the zygote for `key` (starting it if needed) to fork these requests; returns
        (token, error) for any it could not take."""
        zygote = self.zygotes.get(key)
        if zygote is not None:
            failed = self._send_fork(zygote, items)
            if not failed or zygote not in self.retired:
                return failed  # taken, or refused for a socket: a new zygote would not help
            # It died since its last work (its EOF not read yet): a new one takes the rest.
            unsent = {token for token, _ in failed}
            items = [item for item in items if item[0].token in unsent]
        try:
            pid, sock = start_zygote(*key)
        except OSError as exc:
            return [(r.token, f"preload zygote: {exc}") for r, _, _ in items]
        zygote = self.zygotes[key] = ZygoteHandle(key, pid, sock)
        self.selector.register(sock, selectors.EVENT_READ, ("zygote", zygote))
        return self._send_fork(zygote, items)

    def _send_fork(self, zygote: "ZygoteHandle", items: list[tuple[Any, int, int]]) -> list[tuple[int, str]]:
        """Send the requests to one zygote; (token, error) for those it did not get."""
        try:
            for start, end in in_batches(items, lambda item: request_bytes(item[0])):
                batch = items[start:end]
                keys = sorted({key for r, _, _ in batch for _, key in r.sockets})
                message = pickle.dumps(("fork", [(r.token, r) for r, _, _ in batch], keys))
                outputs = [fd for r, out, err in batch for fd in ((out, err) if fd_count(r) == 2 else (out,))]
                socket.send_fds(zygote.sock, [message], outputs + [self.sockets[k] for k in keys])
                zygote.pending.update((r.token, r.env.get("ORCH_INSTANCE")) for r, _, _ in batch)
        except KeyError as exc:
            return [(r.token, f"socket {exc.args[0]} is not held by the spawner") for r, _, _ in items
                    if r.token not in zygote.pending]
        except OSError as exc:
            # A zygote whose import failed exits at once: the send can meet a closed socket
            # before we read why. Its own message says why; EPIPE alone would not.
            self._retire(zygote)
            error = self._exit_reason(zygote) or f"preload zygote: {exc}"
            return [(r.token, error) for r, _, _ in items if r.token not in zygote.pending]
        return []

    def _retire(self, zygote: "ZygoteHandle") -> None:
        """Send it no more work; it stays known (its pid, its workers) until its EOF."""
        if self.zygotes.get(zygote.key) is zygote:
            del self.zygotes[zygote.key]
        self.retired.add(zygote)

    @staticmethod
    def _exit_reason(zygote: "ZygoteHandle") -> str | None:
        """The import error a dead zygote left unread on its socket, if any."""
        if zygote.error or zygote.children or zygote.pending:
            return zygote.error  # a zygote with work in flight: its messages are readable()'s
        while (data := _recv(zygote.sock, socket.MSG_DONTWAIT)):
            message = pickle.loads(data)
            if message[0] == "import_failed":
                zygote.error = message[1]
        return zygote.error

    def readable(self, zygote: "ZygoteHandle") -> None:
        """Forward what a zygote reports to the master, keeping track of its workers."""
        data = _recv(zygote.sock, 0)
        if data is None:
            return
        if not data:
            self._gone(zygote)
            return
        message = pickle.loads(data)
        kind = message[0]
        if kind in ("imported", "import_failed"):
            zygote.imported = kind == "imported"
            if kind == "import_failed":
                zygote.error = message[1]
                self._retire(zygote)  # its EOF follows and fails what it was sent with this error
            self.reloads.answered(zygote)
            return
        if kind == "spawned":
            for token, pid in message[1]:
                name = zygote.pending.pop(token, None)
                zygote.children.add(pid)
                self.children[pid] = zygote
                self.started(pid, name)
        elif kind == "failed":
            for token, _ in message[1]:
                zygote.pending.pop(token, None)
        elif kind == "exited":
            for pid, _ in message[1]:
                zygote.children.discard(pid)
                self.children.pop(pid, None)
                self.exited(pid)
        self.send(message)
        self.close_if_idle(zygote)  # replaced by a code reload, and its last worker is gone

    def _gone(self, zygote: "ZygoteHandle") -> None:
        """Its workers die with it (PDEATHSIG): report them, and fail what it never forked."""
        self.selector.unregister(zygote.sock)
        zygote.sock.close()
        zygote.closed = True
        self._retire(zygote)
        self.retired.discard(zygote)
        self.reloads.answered(zygote)  # a fresh one of a code reload died while importing
        error = zygote.error or "the preload zygote exited"
        if zygote.pending:
            self.send(("failed", [(token, error) for token in zygote.pending]))
        if zygote.children:
            for pid in zygote.children:
                self.children.pop(pid, None)
                self.exited(pid)
            self.send(("exited", [(pid, signal.SIGKILL) for pid in zygote.children]))


def _recv(sock: socket.socket, flags: int) -> bytes | None:  # pragma: no cover - in the helper
    """One message; b"" at EOF, None when none is waiting. A zygote that exits with our
    "fork" unread makes Linux report ECONNRESET once, before the messages it sent are read:
    skip past it, or an import error would be lost for a bare "exited"."""
    for _ in range(2):
        try:
            return sock.recv(RECEIVE_BYTES, flags)
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionResetError:
            continue
        except OSError:
            return b""
    return b""


class ZygoteHandle:  # pragma: no cover - runs in the helper
    """The spawner's view of one zygote."""

    def __init__(self, key: tuple[Any, ...], pid: int, sock: socket.socket):
        self.key = key
        self.pid = pid  # a direct child of the spawner, never taken for an orphan
        self.sock = sock
        self.pending: dict[int, str | None] = {}  # token -> instance name, not forked yet
        self.children: set[int] = set()
        self.error: str | None = None
        self.imported = False  # said "imported": its target is loaded
        self.reload: int | None = None  # the code reload it was started for, until swapped in
        self.replaced = False  # a code reload replaced it: closed once its last worker is gone
        self.closed = False
