"""`Supervisor`: applies plans to instances and reacts to the spawner's events, in the loop.

Every operation is asynchronous: a stop sends the stop signal and arms a SIGKILL deadline,
and the exit arrives later as an event. Many starts and stops in one wake-up are sent to
the spawner as one batch.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Collection, Iterable

from ..expand.spec import ProcessSpec
from ..loop import EventLoop
from ..observe.logs import Echo, LogFile, log_path
from ..procfs import TreeSampler, tree
from ..plan import Hashes, Plan
from ..spawn.spawner import SpawnerClient
from .backoff import decide_limit_restart, decide_restart, limit_at_start
from .events import EventBus, OpsIdle, SpawnerLost, log_transition
from .instance import Instance, describe_exit, sample_usage
from .launch import Launcher
from .probes import gated
from .probe_exec import ExecProbes
from .applying import apply_plan
from .rolling import RollingRestarts
from .start_order import StartOrder
from .stop_order import StopOrder
from .states import ALIVE, State, Then

log = logging.getLogger("orch")


class Supervisor:
    """Owns the instances; the only code that starts, stops and restarts processes."""

    def __init__(self, loop: EventLoop, spawner: SpawnerClient, log_dir: Path,
                 echo: Echo | None = None, notify_socket: str | None = None):
        self.loop = loop
        self.spawner = spawner
        self.log_dir = log_dir
        self.echo = echo
        self.notify_socket = notify_socket
        self.instances: dict[str, Instance] = {}
        self.by_pid: dict[int, Instance] = {}
        self.launcher = Launcher(loop, lambda: self.spawner, notify_socket, self._spawn_failed)
        self.by_token = self.launcher.by_token  # spawn requests in flight, by token
        self.exec_probes = ExecProbes(lambda: self.spawner)  # exec probes run by the spawner
        self.pending_ops = 0
        self.events = EventBus()  # StateChanged and PolicyChanged, for limits, master, logs
        self.events.subscribe(log_transition)
        self.shutting_down = False
        self.rolling = RollingRestarts(self)
        self.order = StartOrder(self, loop)  # `after`: starts wait for their dependencies
        self.trees = TreeSampler()  # /proc fds kept open per live pid, for status and limits
        loop.add_reader(spawner.fileno(), self._on_spawner)

    # --- plans -------------------------------------------------------------------
    def running_view(self) -> dict[str, Hashes]:
        """What reconcile diffs against: each slot's target spec, slots being removed excluded."""
        return {name: inst.next_spec or inst.spec for name, inst in self.instances.items() if inst.then is not Then.REMOVE}

    def apply(self, plan: Plan, held: Collection[str] = ()) -> None:
        """Start, stop, restart and update per the plan (new ones in `held` stay stopped); returns at once."""
        apply_plan(self, plan, held)

    def _new_instance(self, spec: ProcessSpec) -> Instance:
        policy = spec.policy
        logfile = LogFile(log_path(self.log_dir, spec.name), policy.log_max_size, policy.log_backups)
        echo = self.echo.prefixer(spec.name) if self.echo else None
        return Instance(spec, logfile, echo, self.events.emit, self.loop.time)

    # --- rolling restarts (rolling.py) ------------------------------------------------
    def roll(self, label: str, items: list[tuple[Instance, ProcessSpec | None]]) -> None:
        """Restart these instances in batches of their template's `max_unavailable`."""
        self.rolling.roll(label, items)

    def _rollout_failed(self, inst: Instance) -> None:
        self.rolling.failed(inst)

    def op_done(self) -> None:
        """One tracked operation (a reload's stop, a rollout) finished."""
        self.pending_ops -= 1
        if self.pending_ops == 0:
            self.events.emit(OpsIdle())

    def mark_ready(self, inst: Instance, by_probe: bool = False) -> None:
        """The instance's current process is ready (READY=1, or up for min_uptime; with a
        startup or readiness probe, only when the probes say so)."""
        if inst.ready or (gated(inst.spec.probes) and not by_probe):
            return
        inst.ready = True
        self.order.changed()
        if inst.rollout is not None:
            self.rolling.ready(inst)

    def _ready_after_min_uptime(self, inst: Instance) -> None:
        pid = inst.pid

        def check() -> None:
            if inst.pid == pid and inst.state is State.RUNNING:
                self.mark_ready(inst)
        self.loop.call_later(inst.spec.policy.min_uptime, check)

    # --- starting ------------------------------------------------------------------
    def start(self, inst: Instance) -> None:
        """Start a stopped, exited or backing-off instance, once what it is `after` is ready."""
        inst.cancel_timer()
        inst.held = False
        if not self.order.hold(inst):
            self._queue_spawn(inst)

    def start_now(self, inst: Instance) -> None:
        """Start a waiting instance: its dependencies are ready (start_order.py)."""
        self._queue_spawn(inst)

    def _queue_spawn(self, inst: Instance, reason: str | None = None) -> None:
        """The one way to a spawn: all spawns of one wake-up go to the spawner as one message."""
        inst.set_state(State.STARTING, reason)
        inst.token = None
        self.launcher.spawn(inst)

    # --- operator commands ----------------------------------------------------------------
    def hold(self, inst: Instance) -> None:
        """Stop and keep stopped: reloads will not start it until `release`."""
        inst.held = True
        if inst.then is not Then.REMOVE:
            self.stop(inst, Then.STOP)

    def release(self, inst: Instance) -> None:
        """Start a held (or stopped) instance, or turn its stop in progress into a restart."""
        inst.held = False
        if inst.state not in ALIVE:
            self.start(inst)
        elif inst.state is State.STOPPING and inst.then is Then.STOP:
            inst.then = Then.RESTART

    def restart(self, inst: Instance) -> None:
        """Restart now (graceful stop, then start); starts it if it is not running."""
        inst.held = False
        if inst.state not in ALIVE:
            self.start(inst)
        else:
            self.stop(inst, Then.RESTART)

    def flush(self) -> None:
        """Send queued spawns and signals now rather than at the end of this wake-up."""
        self.launcher.flush()

    # --- stopping ------------------------------------------------------------------
    def send_signal(self, inst: Instance, signum: int, group: bool = True) -> None:
        """`signum` to the instance's whole process tree (`group`), or to its main process."""
        if inst.pid is not None:
            self.launcher.signal(inst.pid, signum, group)

    def stop(self, inst: Instance, then: Then = Then.STOP, tracked: bool = False,
             reason: str | None = None) -> None:
        """Graceful stop: the stop signal per `kill_mode`, SIGKILL to the tree after `stop_timeout`.
        `then` says what follows: stay stopped, restart, or remove the slot."""
        if tracked:
            self.pending_ops += 1
            inst.tracked += 1
        inst.then = then
        if reason:
            inst.last_reason = inst.stop_reason = reason
        if inst.state is State.STOPPING:
            return
        inst.cancel_timer()
        if inst.state is State.STARTING and inst.pid is None:
            inst.set_state(State.STOPPING, reason)
            if self.launcher.cancel(inst):  # never sent to the spawner: nothing to stop
                self._after_stop(inst)
            # else the spawner will answer with a pid, and _spawned stops it then
            return
        if inst.state not in ALIVE:  # backoff, exited, stopped: no process to signal
            self._after_stop(inst)
            return
        inst.set_state(State.STOPPING, reason)
        self._signal_stop(inst)

    def _signal_stop(self, inst: Instance) -> None:
        # kill_mode "group": every process of the tree; "mixed": the main process only (it
        # stops its own children; whatever is left when it exits is SIGKILLed by the spawner).
        assert inst.pid is not None
        self.send_signal(inst, inst.spec.policy.stop_signal, group=inst.spec.policy.kill_mode == "group")
        pid = inst.pid
        inst.timer = self.loop.call_later(inst.spec.policy.stop_timeout, lambda: self._kill(inst, pid))

    def _kill(self, inst: Instance, pid: int) -> None:
        if inst.pid == pid:
            log.warning("%s[%d] did not stop within %.1fs: SIGKILL to its whole process tree",
                        inst.name, pid, inst.spec.policy.stop_timeout)
            self.send_signal(inst, signal.SIGKILL)

    def kill_now(self, inst: Instance, reason: str) -> None:
        """SIGKILL the whole tree at once (hard memory limit, timeout), then restart or not per `then`."""
        if inst.pid is None:
            return
        if inst.state is not State.STOPPING:
            inst.then = Then.RESTART if not self.shutting_down else Then.STOP
            inst.set_state(State.STOPPING, reason)
        inst.last_reason = inst.stop_reason = reason
        inst.cancel_timer()
        self.send_signal(inst, signal.SIGKILL)

    def _after_stop(self, inst: Instance, uptime: float | None = None) -> None:
        then, inst.then = inst.then, Then.STOP
        breach = limit_at_start(inst.stop_reason, uptime, inst.spec.policy) if uptime is not None else None
        inst.stop_reason = None
        inst.cancel_timer()
        if inst.state is not State.STOPPED:
            inst.set_state(State.STOPPED)
        if then is Then.REMOVE:
            self.instances.pop(inst.name, None)
            inst.logfile.close()
        elif then is Then.RESTART and not self.shutting_down:
            if inst.next_spec is not None:
                inst.spec, inst.next_spec = inst.next_spec, None
            if breach is None:
                inst.restarts += 1
                self.start(inst)
            else:
                self._breached_at_start(inst, breach, uptime or 0.0)
        tracked, inst.tracked = inst.tracked, 0
        for _ in range(tracked):
            self.op_done()

    def _breached_at_start(self, inst: Instance, breach: str, uptime: float) -> None:
        """A limit recycled the instance within min_uptime of its start: the next start will
        likely breach again, so back off like a crash loop, and say why in status."""
        if inst.rollout is not None:
            self._rollout_failed(inst)
        decision = decide_limit_restart(inst.spec.policy, uptime=uptime, failures=inst.failures)
        inst.failures = decision.failures
        inst.last_reason = breach
        if decision.delay <= 0:
            inst.restarts += 1
            self.start(inst)
            return
        log.warning("%s %s (up %.1fs); %s, restarting in %.1fs", inst.name, breach, uptime,
                    "crash-looping" if decision.crashloop else "backing off", decision.delay)
        inst.set_state(State.CRASHLOOP if decision.crashloop else State.BACKOFF, breach)
        inst.timer = self.loop.call_later(decision.delay, lambda: self._backoff_over(inst))

    # --- events from the spawner -------------------------------------------------------
    def _on_spawner(self) -> None:
        self.launcher.receive(self)
        self.launcher.flush()  # replacements leave before the wake-up's other fds, timers and soon calls

    def exec_failed(self, pid: int, error: str) -> None:
        inst = self.by_pid.get(pid)
        if inst is not None:
            log.error("%s: cannot start: %s", inst.name, error)
            inst.last_reason = "exec failed: " + error

    def probed(self, token: int, result: int | str) -> None:
        self.exec_probes.answered(token, result)

    def spawner_gone(self) -> None:
        self.loop.remove_reader(self.spawner.fileno())
        self.events.emit(SpawnerLost(self.spawner))

    def _spawn_failed(self, inst: Instance, reason: str) -> None:
        """A spawn that never made a process: recorded, then backed off like a crash."""
        log.error("%s: %s", inst.name, reason)
        inst.last_exit = reason
        if inst.state is State.STOPPING:
            self._after_stop(inst)
        elif inst.state is State.STARTING:
            self._exited_early(inst, reason)

    def _spawned(self, token: int, pid: int) -> None:
        inst = self.launcher.answered(token)
        if inst is None:
            return
        inst.pid = pid
        self.trees.track_later(pid, self.loop.call_later, self.by_pid.__contains__)
        inst.started_at = self.loop.time()
        inst.ready = False
        inst.requests = 0
        inst.counts_requests = False
        inst.cpu_sample = None
        inst.start_ticks = None
        self.by_pid[pid] = inst
        log.info("%s[%d] started", inst.name, pid)
        if inst.state is State.STOPPING:  # asked to stop while the spawn was in flight
            self._signal_stop(inst)
            return
        self._ready_after_min_uptime(inst)  # rollouts and start order wait for ready
        inst.set_state(State.RUNNING)

    def _exited(self, pid: int, status: int) -> None:
        inst = self.by_pid.pop(pid, None)
        if inst is None or inst.pid != pid:
            return
        text, success = describe_exit(status)
        self.trees.forget(pid)
        uptime = inst.uptime()
        inst.pid = None
        inst.token = None
        inst.last_exit = text
        if inst.state is State.STOPPING:
            log.info("%s[%d] stopped (%s%s)", inst.name, pid, text,
                     f", {inst.stop_reason}" if inst.stop_reason else "")  # why: max_requests, a limit
            self._after_stop(inst, uptime)
            return
        if not inst.limit_kill:
            inst.last_reason = None
        inst.limit_kill = False
        self._exited_early(inst, text, success, uptime, pid)

    def _exited_early(self, inst: Instance, text: str, success: bool = False, uptime: float = 0.0,
                      pid: int | None = None) -> None:
        if inst.rollout is not None:
            self._rollout_failed(inst)
        decision = decide_restart(inst.spec.policy, success=success, uptime=uptime,
                                  failures=inst.failures, limit_kill=inst.last_reason is not None)
        inst.failures = decision.failures
        who = f"{inst.name}[{pid}]" if pid else inst.name
        if inst.last_reason and pid:  # it said why it exits (ORCH_LIMIT=max_requests, a limit)
            text = f"{text}, {inst.last_reason}"
        if self.shutting_down or not decision.restart:
            log.info("%s exited (%s)%s", who, text,
                     "" if self.shutting_down else f"; restart = {inst.spec.policy.restart}: not restarting")
            inst.set_state(State.EXITED, text)
            return
        if decision.delay <= 0:
            log.info("%s exited (%s); restarting", who, text)
            inst.restarts += 1
            self._queue_spawn(inst, text)
            return
        state = State.CRASHLOOP if decision.crashloop else State.BACKOFF
        log.warning("%s exited (%s) after %.1fs; %s, restarting in %.1fs", who, text, uptime,
                    "crash-looping" if decision.crashloop else "backing off", decision.delay)
        inst.set_state(state, text)
        inst.timer = self.loop.call_later(decision.delay, lambda: self._backoff_over(inst))

    def _backoff_over(self, inst: Instance) -> None:
        inst.timer = None
        if inst.state in (State.BACKOFF, State.CRASHLOOP) and self.instances.get(inst.name) is inst:
            inst.restarts += 1
            self.start(inst)

    def replace_spawner(self, spawner: SpawnerClient) -> None:
        """Use a new spawner after the old one died; every process it had is gone."""
        self.loop.remove_reader(self.spawner.fileno())
        self.spawner.sock.close()
        self.spawner = spawner
        self.loop.add_reader(spawner.fileno(), self._on_spawner)
        self.launcher.clear()
        self.by_pid.clear()
        self.trees.close()
        for inst in list(self.instances.values()):
            if inst.state not in ALIVE:
                continue
            inst.pid = inst.token = None
            inst.last_exit = "spawner died"
            if inst.state is State.STOPPING:
                self._after_stop(inst)
            else:
                inst.restarts += 1
                self._queue_spawn(inst, "spawner died")

    # --- whole fleet ------------------------------------------------------------------
    def alive(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.state in ALIVE]

    def stop_all(self) -> None:
        self.shutting_down = True
        StopOrder(self).begin()  # in waves: dependents before what they are `after`

    def kill_all(self) -> None:
        for inst in self.alive():
            if inst.pid is not None:
                self.send_signal(inst, signal.SIGKILL)

    def tree_pids(self, pid: int) -> list[int]:
        """Every process of the instance whose main process is `pid`: its descendants and
        the orphans the spawner attributed to it, with theirs (for `orch inspect`)."""
        found = set(tree(pid))
        for orphan in self.spawner.orphans(pid):
            found.update(tree(orphan))
        return sorted(found)

    def tree_usage(self, pid: int) -> tuple[int, int, int]:
        """(RSS bytes, CPU ticks, processes) of an instance's whole tree, its orphans included."""
        return self.trees.usage(pid, self.spawner.orphans(pid))

    def status(self, names: Iterable[str] | None = None, usage: bool = False) -> list[dict]:
        """Status rows; with `usage`, fresh RSS (whole tree) and CPU % read from /proc."""
        chosen = list(self.instances.values()) if names is None else [self.instances[n] for n in names]
        if usage:
            sample_usage(chosen, self.tree_usage, self.loop.time())
        return [inst.status() for inst in chosen]
