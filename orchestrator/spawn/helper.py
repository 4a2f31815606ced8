"""The spawner process itself: forks, execs and reaps every child, and keeps each instance's
whole process tree (see spawner.py for why it is a separate process, and its protocol)."""

from __future__ import annotations

import bisect
import gc
import os
import pickle
import selectors
import signal
import socket
import sys
import time
from typing import Any

from .child import (_COORDINATED, MAX_EVENTS_PER_MESSAGE, PR_SET_CHILD_SUBREAPER, close_fds, exec_or_report,
                    kill_group, listen_env, prctl, prepare_child, reaped, receive)
from .cgroups import sweep_run
from .guard import start_guard
from .identity import apply_setup, joining
from .posix import MAX_FAN_OUT, PosixStarter, usable_cpus
from .probe_runner import ProbeRunner
from .request import SpawnRequest, with_outputs
from .trees import Lineage, signal_pid
from ..procfs import children, session, start_time, tree
from ..title import set_title
from ..wakeup import wakeup_pair

SCAN_EVERY = 1.0  # seconds between looks for new orphans while any instance runs, at least
SCAN_BUDGET = 0.0002  # ...and at most this share of a core (the children file costs O(n^2))
RESCANS = (0.003, 0.01, 0.03, 0.1, 0.5)  # after a kill: children reparent to us as their
# killed parents go, over the next moments; not at once: a look is O(children)
AFTER_EXIT = (0.02,)  # after a lone main process exited: its children (if any) were already
# reparented to us, so one look; late enough that the replacement spawn the master is about
# to ask for never waits behind it (at 5,000 children a look takes a few ms)


class Spawner:  # pragma: no cover - runs in the helper process; covered by integration tests
    def __init__(self, sock: socket.socket, run: str, state: str | None = None):
        self.sock = sock
        self.cookie = run
        self.state = state  # the master's state file, for the guard
        self.children: set[int] = set()
        self.errpipes: dict[int, int] = {}  # errpipe read fd -> pid
        self.pid_errpipe: dict[int, int] = {}
        self.selector = selectors.DefaultSelector()
        # main processes the master signalled as a whole tree -> the tree's members then
        self.stopping: dict[int, list[int]] = {}
        self.lineage = Lineage(run)
        self.scans: list[float] = []  # monotonic times of the next looks for orphans, sorted
        self.scan_cost = 0.0  # seconds the last look took
        self.sockets: dict[str, int] = {}  # listening sockets held for children, by key
        from .zygote import ZygotePool  # zygote.py builds on this module's helpers
        self.zygotes = ZygotePool(self.selector, self._send, self.lineage.started, self._leader_exited, self.sockets)
        self.devnull = os.open(os.devnull, os.O_RDWR)  # not inheritable (PEP 446)
        self.posix = PosixStarter(self.devnull)  # the posix_spawn path (posix.py)
        self.probes = ProbeRunner(self.posix, self.devnull, run, self._send)
        self.since = start_time(os.getpid())
        self.guard, self.guard_fd = -1, -1

    def _start_guard(self) -> None:
        if self.guard_fd >= 0:
            os.close(self.guard_fd)
        self.guard, self.guard_fd = start_guard(self.cookie, self.since, self.state)

    def run(self) -> None:
        self._start_guard()
        for signum in _COORDINATED:
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        wake_r, wake_w = wakeup_pair()
        try:
            prctl(PR_SET_CHILD_SUBREAPER, 1)
            self.posix.fan_out = min(MAX_FAN_OUT, usable_cpus())  # helpers' children reparent to us
        except OSError:
            pass
        self.selector.register(self.sock, selectors.EVENT_READ, "master")
        self.selector.register(wake_r, selectors.EVENT_READ, "sigchld")
        gc.freeze()  # its start-up objects live as long as it: never walked again (off until now)
        gc.enable()
        while True:
            for key, _ in self.selector.select(self._scan_timeout()):
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
            self._scan_if_due()

    # --- orphans -------------------------------------------------------------------
    def _scan_timeout(self) -> float | None:
        """Until the next look for orphans: soon after a kill, else every SCAN_EVERY while
        any instance runs (one read of our own children list), else never."""
        if not self.scans and self.lineage.leaders:
            self.scans.append(time.monotonic() + max(SCAN_EVERY, self.scan_cost / SCAN_BUDGET))
        return max(0.0, self.scans[0] - time.monotonic()) if self.scans else None

    def _scan_if_due(self) -> None:
        now = time.monotonic()
        if self.scans and self.scans[0] <= now:
            del self.scans[:bisect.bisect_right(self.scans, now)]
            self._scan()

    def _rescan_soon(self, delays: tuple[float, ...] = RESCANS) -> None:
        """Looks at RESCANS from now, merged with those already due about then: a burst of
        exits (5,000 at a shutdown) must not pile up timers, nor cost a pass over them all
        per exit (that was 10 s of this process's CPU at N = 5,000). `scans` stays sorted."""
        now = time.monotonic()
        # Looks closer together than ten times what one costs are merged: 500 exits in a
        # second (a 10 % reload at 5,000) made a look every 10-20 ms, each of a few ms, and
        # the spawns of that reload waited behind them.
        floor = max(0.002, 10 * self.scan_cost)
        for delay in delays:
            when, near = now + delay, max(delay / 2, floor)
            i = bisect.bisect_left(self.scans, when - near)
            if i == len(self.scans) or self.scans[i] > when + near:
                self.scans.insert(i, when)

    def _scan(self) -> None:
        began = time.monotonic()
        known = {*self.zygotes.pids(), self.guard, *self.probes.tokens}  # exec probes are no orphans
        adopted, ended, strays = self.lineage.scan(self.children, known)
        self.scan_cost = time.monotonic() - began
        if adopted:
            self._send(("adopted", adopted))
        if ended:
            self._rescan_soon()  # their own children reparent to us once they are gone
        if strays:
            self._send(("strays", [(pid, _command(pid)) for pid in strays]))

    def _leader_exited(self, pid: int, direct: bool = False) -> None:
        """A main process ended: SIGKILL what is left of its tree, however it escaped.
        `direct`: it was our own child (reaped here), not a zygote's worker."""
        killed = kill_group(pid)
        orphans = self.lineage.exited(pid)
        for orphan in orphans:
            for member in tree(orphan):
                signal_pid(member, signal.SIGKILL)
        # A stop: what was in the tree when it was signalled and is still in its session
        # (a child in a process group of its own) ends now, before the exit is reported, so
        # that when `orch stop` (a reload, `orch down`) says stopped, nothing of it runs.
        # The members were read then, so no look over all our children is needed now.
        for member in self.stopping.pop(pid, ()):
            if member != pid and session(member) == pid:
                killed = True
                for process in tree(member):
                    signal_pid(process, signal.SIGKILL)
        # Its children were reparented to us before the SIGCHLD: one look finds them (an
        # orphan older than the instance's next main process is ended, so a quick restart
        # cannot adopt it). What was just killed may leave children of its own, later.
        # A zygote's worker keeps the full series: its exit reaches us through the zygote's
        # report, later than its orphans reach us, and a preloaded worker's forked child
        # was seen to outlive a single look (one CI run in several).
        self._rescan_soon(AFTER_EXIT if direct and not (killed or orphans) else RESCANS)

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
            self._hold_sockets(message[1], fds)
            return True
        if message[0] == "close_sockets":
            for fd in [fd for fd in (self.sockets.pop(key, None) for key in message[1]) if fd is not None]:
                os.close(fd)
        elif message[0] == "state":  # the master's state file moved (orchestrator.pidfile): a new guard reads it
            self.state, _ = message[1], os.write(self.guard_fd, b"x\n")  # the old guard exits, no sweep
            self._start_guard()
        elif message[0] == "title":  # orchestrator.name changed
            set_title(message[1])
        elif message[0] == "spawn":
            self._spawn_all(message[1], fds)
        elif message[0] == "signal":
            if any(group for _, _, group in message[1]):
                self._scan()  # orphans not yet seen belong to the trees too
            for pid, signum, group in message[1]:
                self._signal(pid, signum, group)
        elif message[0] in ("probe", "probe_kill", "preload", "preload_abort", "preload_revert"):  # code_reload.py
            (self.probes if message[0].startswith("probe") else self.zygotes.reloads).handle(message)
        elif message[0] == "exit":
            return False
        for fd in fds:
            os.close(fd)
        return True

    def _hold_sockets(self, keys: list[str], fds: list[int]) -> None:
        """Keep the master's listening sockets (close-on-exec here) to pass to children."""
        for key, fd in zip(keys, fds):
            os.set_inheritable(fd, False)
            old = self.sockets.pop(key, None)
            if old is not None:
                os.close(old)
            self.sockets[key] = fd

    def _signal(self, pid: int, signum: int, whole: bool) -> None:
        live = pid in self.children or pid in self.zygotes.children
        if whole and live:
            self.stopping[pid] = self.lineage.signal(pid, signum)
            if signum == signal.SIGKILL:
                self._rescan_soon()  # children of killed processes reparent to us
        elif live:
            signal_pid(pid, signum)
        # Else the main process was reaped already (the master's order crossed its exit
        # report): what was left of its tree was ended then, and its pid, which is also its
        # process group's id, may be another process's by now (pid_max wraps every few
        # reloads of 5,000 instances). Nothing is signalled.

    def _spawn_all(self, requests: list[SpawnRequest], fds: list[int]) -> None:
        spawned, failed = [], []
        preloaded: dict[tuple[Any, ...], list[tuple[SpawnRequest, int, int]]] = {}
        plain: list[tuple[SpawnRequest, int, int]] = []
        for request, out, err in with_outputs(requests, fds, self.devnull):
            # The run's cookie, inherited by every descendant: attributes orphans, and lets
            # the next `orch up` find what a SIGKILLed master and spawner left behind.
            request = request._replace(env={**request.env, "ORCH_RUN": self.cookie})
            if request.preload is not None:  # a zygote per target and set-up (user, limits)
                preloaded.setdefault((*request.preload, request.setup), []).append((request, out, err))
            else:
                plain.append((request, out, err))
        for (request, out, err), (program, env, since, pid) in zip(plain, self.posix.start_all(plain)):
            try:
                if pid is None:  # sockets, a set-up, or posix_spawn refused: the fork path
                    pid = self._fork_exec(program, request, env, out, err)
                self.children.add(pid)
                self.lineage.started(pid, request.env.get("ORCH_INSTANCE"), since)
                spawned.append((request.token, pid))
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

    def _fork_exec(self, program: str, request: SpawnRequest, env: dict[str, str], out: int, err: int) -> int:
        """fork, set the child up in Python (PDEATHSIG, sockets at fds 3.., limits, umask and
        user), exec; an exec error comes back through a close-on-exec pipe, read once the
        child has exec'd."""
        sockets = [self.sockets[key] for _, key in request.sockets]
        err_r, err_w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            setup = request.setup

            def prepare(keep: int) -> None:
                prepare_child(parent, self.devnull, out, request.cwd, sockets, keep=keep, err=err,
                              before_cwd=joining(request.cgroup, None if setup is None else lambda: apply_setup(setup, parent)))
                if request.sockets:
                    env.update(listen_env([name for name, _ in request.sockets]))
            above = 3 + len(sockets) if sockets else 0  # the exec-error pipe out of the sockets' range
            exec_or_report(err_w, prepare, program, request.argv, env, request.cwd, above)
        os.close(err_w)
        os.set_blocking(err_r, False)
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
        exited, released = [], []
        first = True  # a lone crash is reported before the look for more exits: at 5,000
        # children each waitpid(-1) walks the whole list in the kernel (0.5-0.6 ms), and the
        # last one, which finds nothing, would delay the replacement by as much
        for pid, status in reaped():
            if pid == self.guard:
                self._start_guard()  # killed from outside: the children still need one
                continue
            if pid not in self.children:  # an orphan, reparented to us as subreaper, or a probe
                leader = None if self.probes.reaped(pid, status) else self.lineage.reaped(pid)
                if leader is not None:
                    released.append((leader.pid, pid))
                continue
            self.children.discard(pid)
            errpipe = self.pid_errpipe.get(pid)
            if errpipe is not None:
                self._errpipe_ready(errpipe)
            self._leader_exited(pid, direct=True)  # no grandchild outlives its worker
            exited.append((pid, status))
            if first or len(exited) >= MAX_EVENTS_PER_MESSAGE:
                self._send(("exited", exited))
                exited, first = [], False
        if exited:
            self._send(("exited", exited))
        if released:
            self._send(("released", released))

    def _kill_everything(self) -> None:
        """Master gone: SIGKILL every tree, then any orphan reparented to us, and reap all."""
        for pid in list(self.children) + list(self.zygotes.children):
            self.lineage.signal(pid, signal.SIGKILL)
        while True:
            remaining = [pid for pid in children(os.getpid()) if pid != self.guard]
            for pid in remaining:
                signal_pid(pid, signal.SIGKILL)
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                break
            if not remaining:
                break
            time.sleep(0.002)  # SIGKILLed children need a moment before they can be reaped
        sweep_run(self.cookie)  # cgroup = "auto": what is left in the run's cgroups, and the cgroups
        self._stop_guard()

    def _stop_guard(self) -> None:
        """Every tree is ended: tell the guard (it exits without a sweep) and reap it."""
        try:
            os.write(self.guard_fd, b"x\n")
        except OSError:
            pass  # it died just now; nothing is left for it to do
        os.close(self.guard_fd)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                if os.waitpid(self.guard, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.001)
        os.kill(self.guard, signal.SIGKILL)  # stopped or stuck: nothing is left for it to do
        os.waitpid(self.guard, 0)


def main() -> None:  # pragma: no cover - the helper's entry point (spawner.py: helper_argv)
    """Run the spawner: arguments title, socket fd, run cookie, state file ("": none), and
    the RLIMIT_NOFILE for its children as "soft:hard" ("": as inherited)."""
    title, fd, run, state, limit = sys.argv[:5]
    code = 0
    try:
        close_fds(int(fd))  # whatever the master's launcher left inheritable is not ours
        if limit:
            import resource
            soft, hard = (int(n) for n in limit.split(":"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        set_title(title)
        sock = socket.socket(fileno=int(fd))
        os.set_inheritable(sock.fileno(), False)
        Spawner(sock, run, state or None).run()
    except BaseException:  # noqa: BLE001 - report, and never leave a half-working spawner
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _command(pid: int) -> str:  # pragma: no cover - runs in the helper
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(200).replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
