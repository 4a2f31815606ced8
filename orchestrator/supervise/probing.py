"""Runs each instance's probes on the master's loop and acts on their verdicts (probes.py):
marks it ready through `Supervisor.mark_ready`, not ready, or restarts it with the probe's
own words as the reason. A process's probes begin when it runs and end when it stops.
Notify probes are decided from what the notify socket heard (`Notified` events, from
limits.py), at once when a READY=1 or WATCHDOG=1 could make a not yet passing probe pass.
The tcp probes of one tick whose address is this host's are answered together from the
kernel's listener table (listen_lookup.py); the others connect (probe_checks.py)."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from ..config.probes import Probe
from ..loop import EventLoop
from .events import Event, Happened, Notified, PolicyChanged, StateChanged
from .instance import Instance
from .listen_lookup import ListenLookup
from .probe_checks import Check, connect
from .probe_exec import ExecCheck
from .probe_ticks import Ticks
from .probes import (ProbeState, Verdict, decide, first_delay, notify_verdict, ready_on_start, restart_reason,
                     running)
from .states import State, Then

log = logging.getLogger("orch")


class InstanceProbes:
    """The probes of one process of one instance: their states, timers and checks in flight."""

    def __init__(self, inst: Instance, probes: tuple[Probe, ...]) -> None:
        self.inst = inst
        self.pid = inst.pid
        self.probes = probes
        self.started = False  # the startup probe passed (or there is none)
        self.states: dict[str, ProbeState] = {p.role: ProbeState() for p in probes}
        self.timers: dict[str, int] = {}  # role: its next check's token in Prober.ticks
        self.checks: dict[str, Check | ExecCheck] = {}
        self.began: dict[str, float] = {}
        self.failed_at: dict[str, float] = {}  # role: wall-clock time of its last failure

    def close(self) -> None:
        for check in self.checks.values():
            check.cancel()
        self.timers.clear()
        self.checks.clear()

    def status(self) -> dict[str, Any]:
        """Per probe: kind, target, whether it passes, the last result and the last failure."""
        rows = {}
        for p in self.probes:
            state = self.states[p.role]
            rows[p.role] = {"kind": p.kind, "target": p.shown, "passing": state.passing,
                            "active": p in running(self.probes, self.started), "checks": state.checks,
                            "failures": state.failures, "failed": state.failed, "last": state.last,
                            "last_failure": state.last_failure, "last_failure_at": self.failed_at.get(p.role)}
        return rows


class Prober:
    """Every instance's probes; subscribes to the supervisor's events."""

    def __init__(self, supervisor: Any, loop: EventLoop) -> None:
        self.supervisor = supervisor
        self.loop = loop
        self.runs: dict[str, InstanceProbes] = {}
        # name: [pid, READY=1 at, WATCHDOG=1 at] for instances with notify probes; kept apart
        # from runs, since a fast process may speak before its run begins
        self.heard: dict[str, list[Any]] = {}
        self.ticks = Ticks(loop, self._due, before=self._answer_local)
        self.listening = ListenLookup()
        self.answers: dict[int, tuple[bool, str]] = {}  # token: this tick's answer from the table
        supervisor.events.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        inst = getattr(event, "instance", None)
        if isinstance(event, StateChanged):
            if event.started:
                self.begin(inst)
            elif event.new is not State.RUNNING:
                self.end(inst)
                if event.ended:
                    self.heard.pop(inst.name, None)
        elif isinstance(event, Notified):
            self.notified(event)
        elif isinstance(event, PolicyChanged) and inst is not None:
            run = self.runs.get(inst.name)
            if (run.probes if run else ()) != inst.spec.probes and inst.state is State.RUNNING:
                self.end(inst)
                self.begin(inst)

    def begin(self, inst: Instance) -> None:
        """Start probing the instance's current process (nothing when it has no probes)."""
        self.end(inst)
        if not inst.spec.probes or inst.pid is None:
            return
        run = self.runs[inst.name] = InstanceProbes(inst, inst.spec.probes)
        run.started = not any(p.role == "startup" for p in run.probes)
        inst.probes = run
        for probe in running(run.probes, run.started):
            self._schedule(run, probe, first_delay(probe))

    def notified(self, event: Notified) -> None:
        """Note READY=1 / WATCHDOG=1 of an instance with notify probes; check at once a notify
        probe that this may make pass."""
        inst = event.instance
        if not any(p.kind == "notify" for p in inst.spec.probes):
            return
        heard = self.heard.get(inst.name)
        if heard is None or heard[0] != inst.pid:
            heard = self.heard[inst.name] = [inst.pid, None, None]
        now = self.loop.time()
        if event.ready:
            heard[1] = now
        if event.watchdog:
            heard[2] = now
        run = self.runs.get(inst.name)
        if run is None or run.pid != inst.pid:
            return
        for probe in running(run.probes, run.started):
            if probe.kind == "notify" and probe.role != "liveness" and not run.states[probe.role].passing \
                    and probe.role in run.timers:
                del run.timers[probe.role]
                self._check(run, probe)

    def end(self, inst: Instance) -> None:
        run = self.runs.pop(inst.name, None)
        if run is not None:
            run.close()

    def handover(self, inst: Instance) -> dict[str, Any] | None:
        """What `orch upgrade` carries of the probes of the instance's process: each probe's
        counts (a ready instance stays ready, a liveness count goes on, a passed startup probe
        is not run again) and when the notify socket heard READY=1 and WATCHDOG=1."""
        saved: dict[str, Any] = {}
        run, heard = self.runs.get(inst.name), self.heard.get(inst.name)
        if run is not None and run.pid == inst.pid:
            saved.update(started=run.started, failed_at=dict(run.failed_at),
                         states={role: dataclasses.asdict(state) for role, state in run.states.items()})
        if heard is not None and heard[0] == inst.pid:
            saved["heard"] = heard[1:]
        return saved or None

    def take_over(self, inst: Instance, saved: dict[str, Any] | None) -> None:
        """The probes of a handed-over process, begun afresh (`begin`), go on from `saved`."""
        if not saved:
            return
        if saved.get("heard") is not None:
            self.heard[inst.name] = [inst.pid, *saved["heard"]]
        run = self.runs.get(inst.name)
        if run is None or "states" not in saved:
            return
        known = {field.name for field in dataclasses.fields(ProbeState)}
        for role, fields in saved["states"].items():
            if role in run.states:  # the same config, so the same probes; fields a newer orch lacks go
                run.states[role] = ProbeState(**{k: v for k, v in fields.items() if k in known})
        run.failed_at.update(saved.get("failed_at") or {})
        if saved.get("started") and not run.started:  # its startup probe passed: not again
            run.started = True
            run.timers.clear()
            for probe in running(run.probes, True):
                self._schedule(run, probe, first_delay(probe))

    def _schedule(self, run: InstanceProbes, probe: Probe, delay: float) -> None:
        run.timers[probe.role] = self.ticks.add(delay, run, probe)

    def _answer_local(self, entries: list[tuple[Any, ...]]) -> None:
        """Before a tick's checks run: answer its live tcp probes of local addresses at once."""
        self.answers.clear()
        due = [(token, probe) for token, run, probe in entries
               if probe.kind == "tcp" and run.timers.get(probe.role) == token]
        if due:
            found = self.listening.answer([probe for _, probe in due])
            self.answers = {token: answer for (token, _), answer in zip(due, found) if answer is not None}

    def _due(self, token: int, run: InstanceProbes, probe: Probe) -> None:
        if run.timers.get(probe.role) == token:  # else cancelled, or the run ended
            self._check(run, probe, self.answers.pop(token, None))

    def _check(self, run: InstanceProbes, probe: Probe, answer: tuple[bool, str] | None = None) -> None:
        run.timers.pop(probe.role, None)
        if self.runs.get(run.inst.name) is not run:
            return
        run.began[probe.role] = self.loop.time()
        if probe.kind == "notify":
            self._result(run, probe, *self._heard(run, probe))
            return
        if answer is not None:  # the listener table answered, as a connect would have
            self._result(run, probe, *answer)
            return
        opened = connect(probe) if probe.kind == "tcp" else None
        if opened is not None and (opened[0] is None or opened[1] == 0):
            # decided inside connect(2), as on loopback: no Check, closure, timer or epoll entry
            if opened[0] is not None:
                opened[0].close()
            self._result(run, probe, opened[0] is not None, "ok" if opened[0] is not None else str(opened[1]))
            return

        def done(ok: bool, detail: str) -> None:
            self._result(run, probe, ok, detail)
        if probe.kind == "exec":
            run.checks[probe.role] = ExecCheck(self.loop, probe, done, run.inst, self.supervisor.exec_probes)
            run.checks[probe.role].start()
            return
        check = run.checks[probe.role] = Check(self.loop, probe, done)
        check.start(opened)

    def _heard(self, run: InstanceProbes, probe: Probe) -> tuple[bool, str]:
        heard = self.heard.get(run.inst.name)
        ready_at, watchdog_at = (heard[1], heard[2]) if heard is not None and heard[0] == run.pid else (None, None)
        return notify_verdict(probe.message, probe.period, self.loop.time(), ready_at, watchdog_at)

    def _result(self, run: InstanceProbes, probe: Probe, ok: bool, detail: str) -> None:
        run.checks.pop(probe.role, None)
        if self.runs.get(run.inst.name) is not run:
            return
        state, verdict = decide(probe.role, probe.successes, probe.failures, run.states[probe.role], ok, detail)
        run.states[probe.role] = state
        if not ok:
            run.failed_at[probe.role] = time.time()
        if not ok:
            self.supervisor.events.emit(Happened("probe_failed", run.inst, {
                "probe": probe.role, "check": probe.kind, "error": detail, "pid": run.pid,
                "failures": state.failures, "action": verdict.value}))
        if verdict is not Verdict.NONE:
            self._act(run, probe, verdict, detail)
        # `running(run.probes, run.started)` without building its list at every check: before
        # the startup probe passed only it runs, then only the others (started is True from
        # the beginning when there is no startup probe)
        if self.runs.get(run.inst.name) is run and (probe.role == "startup") != run.started:
            elapsed = self.loop.time() - run.began.get(probe.role, 0.0)
            self._schedule(run, probe, max(0.0, probe.period - elapsed))

    def _act(self, run: InstanceProbes, probe: Probe, verdict: Verdict, detail: str) -> None:
        inst = run.inst
        if verdict is Verdict.STARTED:
            run.started = True
            log.info("%s[%s] started: %s probe passed", inst.name, inst.pid, probe.role)
            for other in running(run.probes, True):
                self._schedule(run, other, first_delay(other))
            if ready_on_start(run.probes):
                self.supervisor.mark_ready(inst, by_probe=True)
        elif verdict is Verdict.READY:
            log.info("%s[%s] ready: readiness probe passed", inst.name, inst.pid)
            self.supervisor.mark_ready(inst, by_probe=True)
        elif verdict is Verdict.UNREADY:
            log.warning("%s[%s] not ready: readiness probe failed (%s)", inst.name, inst.pid, detail)
            inst.ready = False
        elif verdict is Verdict.RESTART:
            reason = restart_reason(probe.role, detail)
            log.warning("%s[%s] %s: %d failures in a row; restarting", inst.name, inst.pid, reason, probe.failures)
            self.end(inst)
            inst.limit_kills[probe.role] = inst.limit_kills.get(probe.role, 0) + 1
            self.supervisor.stop(inst, Then.RESTART, reason=reason)
