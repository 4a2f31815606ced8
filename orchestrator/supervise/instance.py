"""`Instance`: one supervised process slot, its state and counters."""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from typing import Any, Callable

from ..expand.identity import RunAs
from ..expand.spec import ProcessSpec
from ..loop import Timer
from ..procfs import CLOCK_TICKS
from ..observe.logs import LogFile
from .events import Event, StateChanged
from .states import State, Then, check_transition

log = logging.getLogger("orch")


class Instance:
    """A named slot that runs one `ProcessSpec` at a time, across restarts."""

    # slots: 35 attributes are past what CPython's key-sharing dicts hold, so every instance
    # paid a full dict of its own (1.6 KB; 8 MiB at 5,000 instances)
    __slots__ = ("_clock", "_emit", "counts_requests", "cpu_percent", "cpu_sample", "echo", "failures",
                 "held", "last_exit", "last_reason", "limit_kill", "limit_kills", "limit_timers", "logfile", "measured",
                 "next_spec", "notify_status", "over_soft", "pid", "probes", "processes", "ready", "requests",
                 "restarts", "rollout", "rss", "spec", "start_ticks", "started_at", "state", "stop_reason",
                 "then", "timer", "token", "tracked", "waiting")

    def __init__(self, spec: ProcessSpec, logfile: LogFile, echo: Callable[[bytes], None] | None,
                 emit: Callable[[Event], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.spec = spec
        self._emit = emit
        self._clock = clock
        self.next_spec: ProcessSpec | None = None  # what to run after the current stop
        self.state = State.STOPPED
        self.pid: int | None = None
        self.token: int | None = None
        self.started_at = 0.0            # monotonic, for uptime and backoff
        self.restarts = 0
        self.failures = 0
        self.last_exit: str | None = None
        self.last_reason: str | None = None  # the limit that caused the last stop, if any
        self.stop_reason: str | None = None  # the limit behind the stop in progress, if any
        self.limit_kills: dict[str, int] = {}
        self.then = Then.STOP             # what follows the current stop
        self.held = False                 # stopped by an operator: reloads must not start it
        self.timer: Timer | None = None   # backoff or kill deadline
        self.logfile = logfile
        self.echo = echo
        self.ready = False
        self.probes: Any = None  # the probes of its process (probing.InstanceProbes), if any
        self.requests = 0
        self.notify_status: str | None = None
        self.rss = 0
        self.measured = 0  # the last PSS or USS sample, with memory.measure = "pss" or "uss"
        self.processes = 0                # in the whole tree, at the last status
        self.cpu_percent = 0.0
        self.over_soft = 0
        self.tracked = 0                  # reload operations waiting on this slot's stop
        self.limit_kill = False           # the worker ended itself for a limit (no backoff)
        self.rollout: Any = None          # the Rollout this instance is part of, if any
        self.limit_timers: dict[str, Timer] = {}  # lifetime, request and watchdog deadlines
        self.counts_requests = False      # sent ORCH_BEGIN=1 in this run
        self.start_ticks: int | None = None  # /proc start time of the current pid (state file)
        self.cpu_sample: tuple[float, int] | None = None  # (monotonic, ticks) at the last status
        self.waiting: str | None = None  # in WAITING: what it waits for (start_order.py)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def target(self) -> ProcessSpec:
        """The spec this slot is converging to."""
        return self.next_spec or self.spec

    def set_state(self, new: State, reason: str | None = None) -> None:
        """The one place a state changes: refuses moves the transition table does not allow,
        then emits `StateChanged` to every subscriber."""
        old = self.state
        check_transition(old, new)
        self.state = new
        if self._emit is not None:
            self._emit(StateChanged(self, old, new, reason))

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def uptime(self) -> float:
        return self._clock() - self.started_at if self.pid else 0.0

    def write_output(self, data: bytes) -> None:
        self.logfile.write(data)
        if self.echo is not None:
            self.echo(data)

    def write_stderr(self, data: bytes) -> None:
        """Output of a separate stderr (`stderr = "separate"`): its own log, and the echo says so."""
        self.logfile.errors().write(data)
        if self.echo is not None:
            self.echo(data, True)

    def status(self) -> dict[str, Any]:
        """A row of `orch status`; control/status_rows.py writes the same row as text for
        `--json` (tests/test_status_text.py holds them equal): change both."""
        return {
            "name": self.name,
            "template": self.spec.template,
            "state": self.state.value,
            "pid": self.pid,
            "uptime": round(self.uptime(), 3) if self.pid else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "reason": f"waiting for {self.waiting or 'its dependencies'}" if self.state is State.WAITING
            else self.last_reason,
            "waiting": self.waiting if self.state is State.WAITING else None,
            "rss": self.rss if self.pid else None,
            "memory_measure": self.spec.policy.memory_measure,
            "measured": self.measured if self.pid and self.spec.policy.memory_measure != "rss" else None,
            "cpu": round(self.cpu_percent, 1) if self.pid else None,
            "processes": self.processes if self.pid else None,
            "requests": self.requests,
            "ready": self.ready,
            "probes": self.probes.status() if self.probes is not None else None,
            "held": self.held,
            "notify_status": self.notify_status,
            "limit_kills": dict(self.limit_kills),
            "hash": self.spec.process_hash,
            "user": _user(self.spec),
        }


def describe_exit(status: int) -> tuple[str, bool]:
    """A raw wait status as text ("exit 3", "SIGKILL") and whether it was a success."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit {code}", code == 0
    try:
        return signal.Signals(-code).name, False
    except ValueError:
        return f"signal {-code}", False


def _user(spec: ProcessSpec) -> str | None:
    """Who the instance runs as, for status: None for the master's own user."""
    return None if spec.run_as is None else _run_as_text(spec.run_as)


@functools.lru_cache(maxsize=256)  # status asks for every row every second (orch top)
def _run_as_text(run_as: RunAs) -> str:
    """"user", or "user:group" when the group is not the user's own (names where known)."""
    import grp
    try:
        group = grp.getgrgid(run_as.gid).gr_name
    except KeyError:
        group = str(run_as.gid)
    user = run_as.user or str(run_as.uid)
    return user if run_as.user and group == user else f"{user}:{group}"


def sample_usage(chosen: list[Instance], usage: Callable[[int], tuple[int, int, int]], now: float) -> None:
    """Fresh RSS, process count and CPU % (since the last sample) for these instances."""
    for inst in chosen:
        if inst.pid is not None:
            inst.rss, ticks, inst.processes = usage(inst.pid)
            since, before = inst.cpu_sample or (inst.started_at, 0)
            elapsed = now - since
            if elapsed > 0:  # ticks of the live tree: an orphan's exit may take some away
                inst.cpu_percent = max(0.0, 100.0 * (ticks - before) / CLOCK_TICKS / elapsed)
            inst.cpu_sample = (now, ticks)
