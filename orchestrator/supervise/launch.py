"""`Launcher`: the supervisor's side of spawning. Every spawn and signal of one loop
wake-up goes to the spawner in as few messages as fit, and each new process's output pipe
is read into its instance's log.

Every instance handed to it leaves "starting": the spawner answers with a pid or a reason,
or the launcher fails it itself (no fd for its pipe, a request the channel refuses, no
answer within ANSWER_TIMEOUT), through `on_failed`, which backs it off like a crash."""

from __future__ import annotations

import errno
import itertools
import os
import resource
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..expand.identity import needs_switch
from ..loop import Coalesced, EventLoop
from ..observe.pipes import OutputPump
from ..spawn.identity import Setup
from ..spawn.request import SpawnRequest
from .states import State

if TYPE_CHECKING:
    from ..spawn.spawner import SpawnerClient
    from .instance import Instance


PIPE_RESERVE = 16  # fds a new instance's pipe leaves free for control connections and logs
ANSWER_TIMEOUT = 30.0


class Reactions(Protocol):
    """What the supervisor does with the spawner's reports."""

    def _spawned(self, token: int, pid: int) -> None: ...

    def _exited(self, pid: int, status: int) -> None: ...

    def _spawn_failed(self, inst: "Instance", reason: str) -> None: ...

    def exec_failed(self, pid: int, error: str) -> None: ...

    def probed(self, token: int, result: int | str) -> None: ...

    def spawner_gone(self) -> None: ...  # seconds the spawner may take to answer a spawn (a fork takes ms)


class Launcher:
    """Queues spawns and signals and sends them in batches; `by_token` maps spawn requests
    in flight to their instance until the spawner answers with a pid."""

    def __init__(self, loop: EventLoop, spawner: Callable[[], "SpawnerClient"], notify_socket: str | None,
                 on_failed: Callable[["Instance", str], None]):
        self.loop = loop
        self.pump = OutputPump(loop)  # every instance's output pipe, read in batches
        self.cgroup_plan: Callable[[Any, int], Any] | None = None  # kernel_memory.py, with cgroup = "auto"
        self.on_failed = on_failed  # the supervisor's: a spawn that never happened, and why
        self.spawner = spawner  # the current one: a dead spawner is replaced
        self.notify_socket = notify_socket
        self.by_token: dict[int, "Instance"] = {}
        self._tokens = itertools.count(1)
        self._spawns: list["Instance"] = []
        self._signals: list[tuple[int, int, bool]] = []
        self._schedule = Coalesced(loop, self.flush)  # all spawns and signals of a wake-up: one flush
        self._sent: dict[int, float] = {}  # token -> when it was sent (oldest first)
        self._overdue_timer: Any = None
        self.answers: dict[str, Callable[[tuple[Any, ...]], None]] = {}  # other reports, by kind ("preloaded")
        # after an upgrade across spawner protocols: hands the old spawner the signals for its
        # processes and returns the rest (handover/beside.py)
        self.divert: Callable[[list[tuple[int, int, bool]]], list[tuple[int, int, bool]]] | None = None

    def spawn(self, inst: "Instance") -> None:
        self._spawns.append(inst)
        self._schedule()

    def signal(self, pid: int, signum: int, group: bool) -> None:
        self._signals.append((pid, signum, group))
        self._schedule()

    def cancel(self, inst: "Instance") -> bool:
        """Drop a spawn not yet sent; False if it was already sent (or never queued)."""
        if inst in self._spawns:
            self._spawns.remove(inst)
            return True
        return False

    def clear(self) -> None:
        """Forget every queued spawn and every request in flight (the spawner died)."""
        self._spawns.clear()
        self.by_token.clear()
        self._sent.clear()

    def flush(self) -> None:
        """Send what is queued now."""
        # Signals first: the spawner handles messages in order, and a stop queued behind
        # 500 spawns waited for all of them (a 10 % reload at 5,000 instances: 0.7 s).
        signals, self._signals = self._signals, []
        if signals and self.divert is not None:
            signals = self.divert(signals)
        if signals:
            try:
                self.spawner().signal(signals)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the spawner is gone, its guard ends its children, and its EOF replaces it
        queue, self._spawns = self._spawns, []
        requests: list[SpawnRequest] = []
        outputs: list[tuple[int, ...]] = []
        top = _pipe_ceiling() if queue else 0
        for inst in queue:
            if inst.state is not State.STARTING or inst.token is not None:
                continue
            try:
                requests.append(self._prepare(inst, outputs, top))
            except Exception as exc:  # noqa: BLE001 - EMFILE for the pipe, a bad value: this one fails
                self._fail(inst, f"cannot start: {_reason(exc)}")
        try:
            failed = self.spawner().spawn(requests, outputs) if requests else []
        except (BrokenPipeError, ConnectionResetError):
            # The spawner died (SIGKILLed mid-batch): these stay in flight until its EOF, and
            # the new spawner starts them again (Supervisor.replace_spawner). This once ended
            # `orch up` with a traceback when it came during the first batch of a start.
            failed = []
        finally:
            for fds in outputs:
                for fd in fds:
                    os.close(fd)
        now = self.loop.time()
        for request in requests:
            self._sent[request.token] = now
        for token, reason in failed:
            inst = self.by_token.get(token)
            if inst is not None:
                self._fail(inst, reason)
        if self._sent and self._overdue_timer is None:
            self._overdue_timer = self.loop.call_later(ANSWER_TIMEOUT, self._check_overdue)

    def _prepare(self, inst: "Instance", outputs: list[tuple[int, ...]], top: int) -> SpawnRequest:
        """The instance's request, with its token and output pipe (two with a separate
        stderr) set up; a pipe may not take the last fds (`top`), or a full table would
        leave no fd for `orch status`. The pipes are the master's: a child running as
        another user writes into them as into any inherited fd."""
        token = next(self._tokens)
        request = self._request(inst, token)
        ends = [_pipe(top)]
        if request.stderr == "separate":
            try:
                ends.append(_pipe(top))
            except OSError:
                os.close(ends[0][0])
                os.close(ends[0][1])
                raise
        inst.token = token
        self.by_token[token] = inst
        self.pump.add(ends[0][0], inst.write_output, inst)
        if len(ends) == 2:
            self.pump.add(ends[1][0], inst.write_stderr, inst)
        outputs.append(tuple(write_end for _, write_end in ends))
        return request

    def on_event(self, event: Any) -> None:
        """An instance ended: its last output goes to its log now, before the subscribers
        after this one (the journal, hooks reading the log's last lines) see the exit."""
        if getattr(event, "ended", False):
            self.pump.drain(event.instance)

    def answered(self, token: int) -> "Instance | None":
        """The instance a spawner's answer (a pid or a failure) is about, no longer in flight."""
        self._sent.pop(token, None)
        return self.by_token.pop(token, None)

    def receive(self, to: "Reactions") -> None:
        """Read what the spawner reports and hand each outcome to `to` (the supervisor)."""
        for event in self.spawner().receive():
            kind = event[0]
            if kind == "spawned":
                for token, pid in event[1]:
                    to._spawned(token, pid)
            elif kind == "exited":
                for pid, status in event[1]:
                    to._exited(pid, status)
            elif kind == "exec_failed":
                to.exec_failed(event[1], event[2])
            elif kind == "probed":
                to.probed(event[1], event[2])
            elif kind == "failed":
                for token, error in event[1]:
                    inst = self.answered(token)
                    if inst is not None:
                        inst.token = None
                        to._spawn_failed(inst, error)
            elif kind == "eof":
                to.spawner_gone()
            elif kind in self.answers:
                self.answers[kind](event)

    def _fail(self, inst: "Instance", reason: str) -> None:
        if inst.token is not None:
            self.by_token.pop(inst.token, None)
            self._sent.pop(inst.token, None)
            inst.token = None
        self.on_failed(inst, reason)

    def _check_overdue(self) -> None:
        """Fail the spawns the spawner never answered (it lost the message, or hangs)."""
        self._overdue_timer = None
        now = self.loop.time()
        for token, sent in list(self._sent.items()):
            if now - sent < ANSWER_TIMEOUT:
                break  # in sending order: the rest are younger
            inst = self.by_token.get(token)
            self._sent.pop(token)
            if inst is not None:
                self._fail(inst, f"the spawner did not answer within {ANSWER_TIMEOUT:.0f}s")
        if self._sent:
            oldest = next(iter(self._sent.values()))
            self._overdue_timer = self.loop.call_later(ANSWER_TIMEOUT - (now - oldest), self._check_overdue)

    def _request(self, inst: "Instance", token: int) -> SpawnRequest:
        spec = inst.spec
        env = spec.full_env()  # the user's HOME etc., the env files, then env
        env["ORCH_INSTANCE"] = spec.name
        if self.notify_socket:
            env["NOTIFY_SOCKET"] = self.notify_socket
        if spec.policy.max_requests:
            env["ORCH_MAX_REQUESTS"] = str(spec.policy.max_requests)
        if spec.policy.timeout:
            env["WATCHDOG_USEC"] = str(int(spec.policy.timeout * 1e6))
        preload = (spec.python.target, spec.python.pythonpath) if spec.python and spec.python.preload else None
        sockets = tuple(zip((name for name, _ in spec.sockets), spec.socket_keys))
        return SpawnRequest(token, spec.argv, env, spec.inherit_env, spec.cwd, preload, sockets,
                            _setup(spec), spec.stderr, self.cgroup_plan and self.cgroup_plan(spec, token))


def _pipe(top: int) -> tuple[int, int]:
    """A pipe (read end non-blocking) whose write end is below `top`."""
    read_end, write_end = os.pipe()
    if write_end >= top:
        os.close(read_end)
        os.close(write_end)
        raise OSError(errno.EMFILE, f"no file descriptor to spare for its output (limit {top + PIPE_RESERVE})")
    os.set_blocking(read_end, False)
    return read_end, write_end


def zygote_key(spec: Any) -> tuple[Any, ...] | None:
    """The spawner's key of the zygote a preloaded spec forks from (spawn/zygote.py), else None."""
    if not (spec.python and spec.python.preload):
        return None
    return (spec.python.target, spec.python.pythonpath, _setup(spec))


def _setup(spec: Any) -> Setup | None:
    """What the child takes on before exec (spawn/identity.py), None when nothing."""
    from ..config.production import RLIMITS_BY_NAME
    switch = needs_switch(spec.run_as)
    if not switch and not spec.rlimits and spec.umask is None:
        return None
    run_as = spec.run_as if switch else None
    return Setup(run_as.uid if run_as else None, run_as.gid if run_as else None,
                 run_as.groups if run_as else None, spec.umask,
                 tuple((RLIMITS_BY_NAME[name][0], soft, hard) for name, (soft, hard) in spec.rlimits))


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"


def _pipe_ceiling() -> int:
    """The lowest fd number an instance's pipe may not have."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft - PIPE_RESERVE if soft != resource.RLIM_INFINITY else 1 << 30
