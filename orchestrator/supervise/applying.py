"""Applying a plan (plan.py's reconcile) to the running fleet: start what is new, stop what
is gone, restart what changed (in batches for `rolling` templates), update policies in place.
Returns at once; the work goes on in the loop."""

from __future__ import annotations

from typing import Any, Callable, Collection, Protocol

from ..expand.spec import ProcessSpec
from ..plan import Plan
from .events import PolicyChanged
from .instance import Instance
from .states import ALIVE, State, Then


class Applier(Protocol):
    """What applying a plan needs of the supervisor."""

    instances: dict[str, Instance]
    events: Any

    def _new_instance(self, spec: ProcessSpec) -> Instance: ...

    def start(self, inst: Instance) -> None: ...

    def stop(self, inst: Instance, then: Then = Then.STOP, tracked: bool = False) -> None: ...

    def roll(self, label: str, items: list[tuple[Instance, ProcessSpec | None]]) -> None: ...


def apply_plan(supervisor: Applier, plan: Plan, held: Collection[str] = ()) -> None:
    """Start, stop, restart and update per the plan; new instances named in `held` are
    created stopped and held, as `orch stop` left them before the master restarted."""
    for spec in plan.start:
        existing = supervisor.instances.get(spec.name)
        if existing is not None:  # still stopping from an earlier removal: run it again after
            existing.next_spec = spec
            existing.then = Then.RESTART
            continue
        inst = supervisor._new_instance(spec)
        supervisor.instances[spec.name] = inst
        if spec.name in held:
            inst.held = True
            continue
        supervisor.start(inst)
    for name in plan.stop:
        supervisor.stop(supervisor.instances[name], Then.REMOVE, tracked=True)
    rolling: dict[str, list[tuple[Instance, ProcessSpec | None]]] = {}
    for spec in plan.restart:
        inst = supervisor.instances[spec.name]
        if inst.held or inst.state in (State.STOPPED, State.EXITED):
            inst.spec, inst.next_spec = spec, None
            continue
        if spec.policy.rolling and inst.state in ALIVE:
            rolling.setdefault(spec.template, []).append((inst, spec))
            continue
        inst.next_spec = spec
        supervisor.stop(inst, Then.RESTART, tracked=True)
    for template, items in rolling.items():
        supervisor.roll(f"template {template}", items)
    for spec in plan.update:
        inst = supervisor.instances[spec.name]
        if inst.next_spec is not None:
            inst.next_spec = spec
            continue
        inst.spec = spec
        inst.logfile.max_size, inst.logfile.backups = spec.policy.log_max_size, spec.policy.log_backups
        supervisor.events.emit(PolicyChanged(inst))


FIRST_CHUNK = 64  # the first spawns a new master sends: one spawner message
CHUNK = 256       # then this many instances set up per message batch


def apply_first(supervisor: Applier, plan: Plan, held: Collection[str], flush: Callable[[], None]) -> None:
    """A new master's plan (only starts): set up and send a chunk of instances at a time, so
    the spawner forks the first ones while the master sets up the rest (instance, log file,
    request and pipe: most of the master's part of a start at 5,000) on the other core.
    Order decisions (`after`) wait for the loop's next turn, when every instance exists."""
    if plan.stop or plan.restart or plan.update:
        apply_plan(supervisor, plan, held)
        flush()
        return
    bounds = [0, *range(FIRST_CHUNK, len(plan.start), CHUNK), len(plan.start)]
    for first, end in zip(bounds, bounds[1:]):
        apply_plan(supervisor, Plan(start=plan.start[first:end]), held)
        flush()
