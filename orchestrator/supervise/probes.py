"""What a probe's result means for its instance (pure): ready, not ready any more, or to be
restarted. `probing.py` runs the checks on the loop and acts on these verdicts.

- `startup` must pass before the other probes count: failing `failures` times in a row
  restarts the instance; passing `successes` times makes it started (and ready, when it has
  no readiness probe).
- `readiness` makes the instance ready after `successes` passes in a row, and not ready
  after `failures` failures in a row.
- `liveness` failing `failures` times in a row restarts the instance.

A notify probe is checked like the others, every `period`, from what the notify socket heard:
READY=1 from this process (`notify = "ready"`), or a WATCHDOG=1 within the last period
(`notify = "watchdog"`, whose first check comes one period after the probe begins).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence


class Verdict(Enum):
    """What one result asks of the instance."""

    NONE = "none"
    STARTED = "started"  # the startup probe passed: the other probes begin
    READY = "ready"
    UNREADY = "unready"
    RESTART = "restart"


@dataclass(frozen=True)
class ProbeState:
    """One probe of one process: results in a row, whether it passes, and its last words."""

    successes: int = 0
    failures: int = 0
    passing: bool = False
    checks: int = 0
    failed: int = 0  # checks that failed, in all
    last: str | None = None  # "ok", or what failed
    last_failure: str | None = None


def decide(role: str, successes: int, failures: int, state: ProbeState, ok: bool,
           detail: str = "ok") -> tuple[ProbeState, Verdict]:
    """The new state of a probe with these thresholds after one result, and its verdict."""
    if ok:  # the common case, run at every check: built directly (dataclasses.replace costs 3x)
        count = state.successes + 1
        now_passing = state.passing or count >= successes
        new = ProbeState(count, 0, now_passing, state.checks + 1, state.failed, "ok", state.last_failure)
        if state.passing or not now_passing:
            return new, Verdict.NONE
        return new, {"startup": Verdict.STARTED, "readiness": Verdict.READY}.get(role, Verdict.NONE)
    state = dataclasses.replace(state, successes=0, failures=state.failures + 1, checks=state.checks + 1,
                                failed=state.failed + 1, last=detail, last_failure=detail)
    if state.failures < failures:
        return state, Verdict.NONE
    if role == "readiness":
        if not state.passing:
            return state, Verdict.NONE
        return dataclasses.replace(state, passing=False), Verdict.UNREADY
    if role == "startup" and state.passing:
        return state, Verdict.NONE  # once started, the startup probe is never run again
    return dataclasses.replace(state, passing=False, failures=0), Verdict.RESTART


def gated(probes: Sequence[Any]) -> bool:
    """Whether these probes decide readiness (a startup or readiness probe): then neither
    `min_uptime` nor READY=1 makes the instance ready."""
    return any(p.role in ("startup", "readiness") for p in probes)


def running(probes: Sequence[Any], started: bool) -> list[Any]:
    """The probes that run now: the startup probe until it passed, then the others."""
    has_startup = any(p.role == "startup" for p in probes)
    if has_startup and not started:
        return [p for p in probes if p.role == "startup"]
    return [p for p in probes if p.role != "startup"]


def ready_on_start(probes: Sequence[Any]) -> bool:
    """Whether passing the startup probe makes the instance ready (no readiness probe)."""
    return not any(p.role == "readiness" for p in probes)


def restart_reason(role: str, detail: str) -> str:
    """The reason recorded for a restart: the probe's own words ("liveness: HTTP 500 from /health")."""
    return f"{role}: {detail}"


def notify_verdict(message: str, period: float, now: float, ready_at: float | None,
                   watchdog_at: float | None) -> tuple[bool, str]:
    """(passed, detail) of a notify probe at `now`, from when this process last said READY=1
    and WATCHDOG=1 (None: never)."""
    if message == "ready":
        return (True, "ok") if ready_at is not None else (False, "no READY=1 yet")
    if watchdog_at is not None and now - watchdog_at <= period:
        return True, "ok"
    return False, f"no WATCHDOG=1 for {period:g}s"


def first_delay(probe: Any) -> float:
    """When a probe's first check comes after it begins: at once, but a watchdog is given one
    period to say WATCHDOG=1."""
    return probe.period if probe.kind == "notify" and probe.message == "watchdog" else 0.0
