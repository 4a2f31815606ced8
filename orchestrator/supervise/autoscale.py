"""The scaling decision of one matrix cell (pure): from its backlog, bounds and pace to the
replica count it should run, with hysteresis. supervise/scaler.py feeds it readings and the
clock and applies what it returns; tests/test_autoscale.py replays histories through it.

Desired = clamp(ceil(backlog / per), min, max). A count goes up once the demand has stayed
above it for `up_after`, down once it has stayed below for `down_after`, by at most `step`
per decision; a cell outside changed bounds is brought inside at once; a reading that could
not be made changes nothing and restarts both waits; a pinned cell (`orch scale`) holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config.scaling import Scale, wanted

STEP_EVERY = 1.0  # seconds between two steps of one climb or descent: `step` replicas a second


@dataclass(frozen=True)
class Bounds:
    """A cell's range and the waiting messages each replica is meant for."""

    min: int
    max: int
    per: int


@dataclass(frozen=True)
class CellState:
    """What a cell's decisions remember: the count asked for, and since when the demand has
    stayed above (`up_since`) or below (`down_since`) it."""

    count: int
    up_since: float | None = None
    down_since: float | None = None
    stepped_at: float | None = None  # the last step of an ongoing climb or descent


@dataclass(frozen=True)
class Decision:
    """One decision: the count to run, the count the backlog asks for, why, whether the count
    changed, and when to decide again without a new reading (a wait ends), if ever."""

    count: int
    wanted: int | None
    reason: str
    changed: bool
    wake_at: float | None = None


def start_state(bounds: Bounds) -> CellState:
    """A new cell runs its minimum until its first reading says otherwise."""
    return CellState(bounds.min)


def decide(state: CellState, backlog: int | None, now: float, bounds: Bounds, pace: Scale,
           pinned: int | None = None) -> tuple[CellState, Decision]:
    """The next state and the decision for one reading (`backlog` None: unreadable)."""
    if pinned is not None:
        count = max(0, min(pinned, bounds.max))
        return CellState(count), Decision(count, None, f"pinned at {count} by orch scale", count != state.count)
    clamped = max(bounds.min, min(bounds.max, state.count))
    if clamped != state.count:
        return CellState(clamped), Decision(clamped, None, f"bounds are now {bounds.min}-{bounds.max}", True)
    if backlog is None:
        return CellState(state.count), Decision(state.count, None, "backlog unreadable: count kept", False)
    want = wanted(backlog, bounds.min, bounds.max, bounds.per)
    if want > state.count:
        return _toward(replace(state, down_since=None), want, backlog, now, pace, up=True)
    if want < state.count:
        return _toward(replace(state, up_since=None), want, backlog, now, pace, up=False)
    return CellState(state.count), Decision(state.count, want, f"backlog {backlog}: {want} wanted, steady", False)


def _toward(state: CellState, want: int, backlog: int, now: float, pace: Scale,
            up: bool) -> tuple[CellState, Decision]:
    since = (state.up_since if up else state.down_since)
    since = now if since is None else since
    wait = pace.up_after if up else pace.down_after
    word = "above" if up else "below"
    if now - since < wait:
        kept = replace(state, up_since=since) if up else replace(state, down_since=since)
        return kept, Decision(state.count, want, f"backlog {backlog}: {want} wanted, {word} "
                              f"{state.count} for {now - since:.1f}s of {wait:g}s", False, since + wait)
    # The wait has been served: while the demand holds, the climb (or descent) goes on by
    # `step` a second, rather than `step` per `up_after`.
    if state.stepped_at is not None and now - state.stepped_at < STEP_EVERY:
        kept = replace(state, up_since=since) if up else replace(state, down_since=since)
        return kept, Decision(state.count, want, f"backlog {backlog}: {want} wanted, next step at most "
                              f"{STEP_EVERY:g}s after the last", False, state.stepped_at + STEP_EVERY)
    count = min(want, state.count + pace.step) if up else max(want, state.count - pace.step)
    moved = (CellState(count, up_since=since, stepped_at=now) if up
             else CellState(count, down_since=since, stepped_at=now))
    if count == want:
        moved = CellState(count)
    verb = "up" if up else "down"
    return moved, Decision(count, want, f"backlog {backlog}: {want} wanted, {word} {state.count} for "
                           f"{now - since:.1f}s: {verb} to {count}", True)
