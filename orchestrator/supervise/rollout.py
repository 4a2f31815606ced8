"""`Rollout`: restart a set of instances in batches, each batch ready before the next.

Ready means `READY=1` from a worker that speaks the notify protocol, otherwise up for
`min_uptime`. An instance that dies before it is ready halts the rollout: the rest keep
running their old process, and the next reload (or `orch restart`) tries again.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from ..expand.spec import ProcessSpec

if TYPE_CHECKING:
    from .instance import Instance
    from .supervisor import Supervisor

log = logging.getLogger("orch")


class Rollout:
    """At most `batch` instances of the set are down or not yet ready at any time."""

    def __init__(self, supervisor: "Supervisor", label: str, batch: int,
                 items: list[tuple["Instance", ProcessSpec | None]]):
        self.supervisor = supervisor
        self.label = label
        self.batch = max(1, batch)
        self.waiting = collections.deque(items)
        self.in_flight: set["Instance"] = set()
        self.total = len(items)

    def begin(self) -> None:
        self.supervisor.pending_ops += 1  # a queued reload waits for the whole rollout
        self.supervisor.rollouts.add(self)
        log.info("rolling restart of %s: %d instances, %d at a time", self.label, self.total, self.batch)
        self._fill()

    def _fill(self) -> None:
        while len(self.in_flight) < self.batch and self.waiting:
            inst, spec = self.waiting.popleft()
            if self.supervisor.instances.get(inst.name) is not inst or inst.then == "remove":
                continue
            if spec is not None:
                inst.next_spec = spec
            inst.rollout = self
            self.in_flight.add(inst)
            self.supervisor.stop(inst, then="restart", tracked=True)
        if not self.in_flight and not self.waiting:
            self._end(f"rolling restart of {self.label} done")

    def ready(self, inst: "Instance") -> None:
        """`inst` runs its new process and is ready: start the next one."""
        inst.rollout = None
        self.in_flight.discard(inst)
        self._fill()

    def failed(self, inst: "Instance") -> None:
        inst.rollout = None
        self.in_flight.discard(inst)
        left = len(self.waiting)
        self.waiting.clear()
        self._end(f"rolling restart of {self.label} halted: {inst.name} died before it was ready; "
                  f"{left} instances keep their old process", warning=True)

    def _end(self, message: str, warning: bool = False) -> None:
        if self not in self.supervisor.rollouts:
            return
        self.supervisor.rollouts.discard(self)
        (log.warning if warning else log.info)(message)
        self.supervisor.op_done()
