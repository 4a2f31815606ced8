"""Rolling restarts as the supervisor runs them: batches of a template's `max_unavailable`
(rollout.py decides which), each stopped and restarted onto its new spec, the next batch once
the last one is ready, halted when one dies before it is ready. A rollout is one tracked
operation, so a reload queued behind it waits for the whole of it."""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from ..expand.spec import ProcessSpec
from .instance import Instance
from .rollout import Rollout
from .states import Then

log = logging.getLogger("orch")


class Stopper(Protocol):
    """What a rollout needs of the supervisor."""

    instances: dict[str, Instance]
    pending_ops: int

    def stop(self, inst: Instance, then: Then = Then.STOP, tracked: bool = False) -> None: ...

    def op_done(self) -> None: ...


class RollingRestarts:
    """The rollouts in progress of one supervisor."""

    def __init__(self, supervisor: Stopper) -> None:
        self.supervisor = supervisor
        self.rollouts: set[Rollout[Instance]] = set()
        self.on_halt: dict[Rollout[Instance], Callable[[str], None]] = {}  # a code reload's revert

    def roll(self, label: str, items: list[tuple[Instance, ProcessSpec | None]],
             on_halt: Callable[[str], None] | None = None) -> None:
        batch = min(inst.target.policy.max_unavailable for inst, _ in items)
        rollout: Rollout[Instance] = Rollout(label, batch, items)
        if on_halt is not None:
            self.on_halt[rollout] = on_halt
        self.supervisor.pending_ops += 1
        self.rollouts.add(rollout)
        log.info("rolling restart of %s: %d instances, %d at a time", label, rollout.total, rollout.batch)
        self._roll_on(rollout)

    def status(self) -> list[dict[str, object]]:
        """The rolling restarts in progress, for `orch status`."""
        return [{"label": r.label, "total": r.total, "done": r.total - len(r.waiting) - len(r.in_flight),
                 "restarting": sorted(inst.name for inst in r.in_flight)} for r in self.rollouts]

    def adopt(self, rollout: Rollout[Instance]) -> None:
        """A rollout an upgraded master had begun (handover/): it goes on where it stood, its
        instances in flight already marked (`inst.rollout`)."""
        self.supervisor.pending_ops += 1
        self.rollouts.add(rollout)
        log.info("rolling restart of %s goes on: %d of %d instances left", rollout.label,
                 len(rollout.waiting) + len(rollout.in_flight), rollout.total)
        self._roll_on(rollout)

    def ready(self, inst: Instance) -> None:
        """`inst`, part of a rollout, is ready on its new process: go on with the next batch."""
        rollout, inst.rollout = inst.rollout, None
        if rollout is not None:
            rollout.ready(inst)
            self._roll_on(rollout)

    def failed(self, inst: Instance) -> None:
        """`inst` died before it was ready: halt its rollout, the rest keep their old process."""
        rollout, inst.rollout = inst.rollout, None
        if rollout is None:
            return
        left = rollout.failed(inst)
        halted = self.on_halt.pop(rollout, None)
        message = (f"rolling restart of {rollout.label} halted: {inst.name} died before it was ready"
                   f"{f' ({inst.last_exit})' if inst.last_exit else ''}; {left} instances keep their old process")
        self._end(rollout, message, warning=True)
        if halted is not None:
            halted(message)

    def _roll_on(self, rollout: Rollout[Instance]) -> None:
        instances = self.supervisor.instances

        def eligible(inst: Instance) -> bool:
            return instances.get(inst.name) is inst and inst.then is not Then.REMOVE
        for inst, spec in rollout.take(eligible):
            if spec is not None:
                inst.next_spec = spec
            inst.rollout = rollout
            self.supervisor.stop(inst, Then.RESTART, tracked=True)
        if rollout.finished:
            self._end(rollout, f"rolling restart of {rollout.label} done")

    def _end(self, rollout: Rollout[Instance], message: str, warning: bool = False) -> None:
        if rollout not in self.rollouts:
            return
        self.rollouts.discard(rollout)
        self.on_halt.pop(rollout, None)
        (log.warning if warning else log.info)(message)
        self.supervisor.op_done()
