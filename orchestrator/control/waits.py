"""Control verbs that finish what they start: `orch stop`, `start` and `restart` answer once
every named instance got where the command sent it (old process gone; new one up for its
`min_uptime`, or said READY=1), or failed, or the deadline passed (exit 1 with the reason).

Each waiting command is a `Wait`; the supervisor's state changes re-check the waits (at
most once per loop wake-up, never mid-operation), and a timer fails whatever is overdue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..loop import Coalesced, EventLoop, Timer
from ..supervise.events import Event, StateChanged
from ..supervise.probes import gated
from ..supervise.states import ALIVE, State
from .server import Pending

POLL = 0.1  # seconds between looks while a command waits for readiness
FAILED = (State.BACKOFF, State.CRASHLOOP, State.EXITED, State.STOPPED)


@dataclass
class Goal:
    """Where one instance must get: "stopped"; or, with a pid other than `old_pid`, "ready"
    (up for `min_uptime`, or said READY=1: what start and restart wait for) or "running"
    (a process, ready or not)."""

    name: str
    want: str
    old_pid: int | None = None


def check(goal: Goal, inst: Any, why: str | None = None, up: bool = False) -> tuple[bool, str | None]:
    """(finished, failure or None) of one goal against the instance's current state; `why`
    is the reason given with its last state change, `up` whether its process has been up
    for its `min_uptime` (pure)."""
    if goal.want == "stopped":
        return inst is None or inst.state not in ALIVE, None
    if inst is None:
        return True, f"{goal.name} was removed"
    if inst.state is State.RUNNING and inst.pid is not None and inst.pid != goal.old_pid:
        # Not ready yet: a process that dies at once was spawned, but did not start. Its
        # death (backoff, crash loop, exited) is the failure reported below.
        return goal.want == "running" or inst.ready or up, None
    if inst.state in FAILED and inst.pid is None:
        why = inst.last_reason or why or inst.last_exit
        return True, f"{goal.name} is {inst.state.value}" + (f" ({why})" if why else "")
    return False, None


def describe(goal: Goal, inst: Any) -> str:
    """What an unfinished goal is still waiting for, for the timeout message."""
    state = inst.state.value if inst is not None else "gone"
    if goal.want == "stopped":
        return f"{goal.name} is still {state}"
    if inst is not None and inst.state is State.RUNNING:
        if inst.pid == goal.old_pid:
            return f"{goal.name} still runs its old process"
        if gated(inst.spec.probes):
            return f"{goal.name} is running but its probes do not pass yet{_last_failure(inst)}"
        return f"{goal.name} is running but not ready yet (up min_uptime, or READY=1)"
    return f"{goal.name} is still {state} (not running yet)"


class Wait:
    """One waiting command: its goals, its pending reply and its deadline."""

    def __init__(self, goals: list[Goal], reply: Pending, result: Any, timeout: float, timer: Timer):
        self.goals = goals
        self.reply = reply
        self.result = result
        self.timeout = timeout
        self.timer = timer


class Waits:
    """Every command waiting on instances, re-checked as their states change."""

    def __init__(self, loop: EventLoop, supervisor: Any):
        self.loop = loop
        self.supervisor = supervisor
        self.active: list[Wait] = []
        self._queue_check = Coalesced(self.loop, self._check)  # one look per wake-up
        self._poll: Timer | None = None
        self.reasons: dict[str, str | None] = {}  # instance -> reason of its last state change
        supervisor.events.subscribe(self._on_event)

    def add(self, goals: list[Goal], result: Any, timeout: float) -> Pending:
        """A pending reply that resolves to `result` once every goal is met."""
        reply = Pending()
        wait = Wait(goals, reply, result, timeout, self.loop.call_later(timeout, lambda: self._overdue(wait)))
        self.active.append(wait)
        self._queue_check()  # after the handler returned: the reply is bound to its connection then
        return reply

    def by_connection(self) -> dict[Any, list[Wait]]:
        """The waits not answered yet, by the connection they answer on."""
        found: dict[Any, list[Wait]] = {}
        for wait in self.active:
            if wait.reply.conn is not None and not wait.reply.answered:
                found.setdefault(wait.reply.conn, []).append(wait)
        return found

    @staticmethod
    def handover(wait: Wait) -> dict[str, Any]:
        """A wait as `orch upgrade` carries it (its deadline on CLOCK_MONOTONIC, which exec keeps)."""
        return {"goals": [[g.name, g.want, g.old_pid] for g in wait.goals], "result": wait.result,
                "timeout": wait.timeout, "due": wait.timer.when}

    def take_over(self, conn: Any, saved: dict[str, Any]) -> None:
        """A command the master was waiting on before an upgrade, its connection handed over:
        it goes on waiting, until the same deadline, and is answered on that connection."""
        reply = self.add([Goal(*goal) for goal in saved["goals"]], saved["result"],
                         max(0.0, saved["due"] - self.loop.time()))
        self.active[-1].timeout = saved["timeout"]  # what the message of a timeout says
        conn.owed += 1
        reply.conn = conn

    def _on_event(self, event: Event) -> None:
        if self.active and isinstance(event, StateChanged):
            self.reasons[event.instance.name] = event.reason
            self._queue_check()

    def _check(self) -> None:
        for wait in list(self.active):
            failures, pending = [], []
            for goal in wait.goals:
                inst = self.supervisor.instances.get(goal.name)
                finished, failure = check(goal, inst, self.reasons.get(goal.name), _up(inst))
                if failure:
                    failures.append(failure)
                elif not finished:
                    pending.append(goal)
            wait.goals = pending
            if failures:
                self._end(wait, "; ".join(failures))
            elif not pending:
                self._end(wait, None)
        if self.active and self._poll is None:  # min_uptime passing changes no state: look again
            self._poll = self.loop.call_later(POLL, self._polled)

    def _polled(self) -> None:
        self._poll = None
        self._queue_check()

    def _overdue(self, wait: Wait) -> None:
        if wait in self.active:
            still = "; ".join(describe(g, self.supervisor.instances.get(g.name)) for g in wait.goals)
            self._end(wait, f"not done after {wait.timeout:g}s: {still}")

    def _end(self, wait: Wait, failure: str | None) -> None:
        self.active.remove(wait)
        wait.timer.cancel()
        if not self.active:
            self.reasons.clear()
        if failure:
            wait.reply.fail(failure)
        else:
            wait.reply.resolve(wait.result)


def _up(inst: Any) -> bool:
    """Its current process has been up for its `min_uptime` (uptime on the loop's clock)."""
    return inst is not None and inst.pid is not None and inst.uptime() >= inst.spec.policy.min_uptime \
        and not gated(inst.spec.probes)  # a startup or readiness probe alone says ready


def _last_failure(inst: Any) -> str:
    """" (readiness: HTTP 503 from /health)": the last failure of a probe, if there was one."""
    rows = inst.probes.status() if getattr(inst, "probes", None) is not None else {}
    failed = [f"{role}: {row['last']}" for role, row in rows.items() if row["last"] not in (None, "ok")]
    return f" ({'; '.join(failed)})" if failed else ""
