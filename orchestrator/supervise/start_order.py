"""Start order on the loop: a start of an instance whose template is `after` others waits
in WAITING until order.py says every instance it is after is done, and is re-decided, once
per loop wake-up, after any state change or readiness. A reload that adds `after` restarts
nothing: it only orders the starts that come from then on."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..loop import EventLoop
from .events import Event, EventBus, StateChanged
from .instance import Instance
from .order import Peer, may_start
from .states import State

log = logging.getLogger("orch")


class Starter(Protocol):
    """What start order needs of the supervisor."""

    instances: dict[str, Instance]
    events: EventBus

    def start_now(self, inst: Instance) -> None: ...


class StartOrder:
    """The instances waiting for their dependencies, and the re-decision of who may start."""

    def __init__(self, supervisor: Starter, loop: EventLoop) -> None:
        self.supervisor = supervisor
        self.loop = loop
        self.waiting: dict[str, Instance] = {}
        self._scheduled = False
        supervisor.events.subscribe(self.on_event)

    def hold(self, inst: Instance) -> bool:
        """Whether this start must wait: every start of an instance with `after` is decided
        on the next turn of the loop, once the whole plan's instances exist (an instance of
        redis created later in the same plan must hold back its consumer)."""
        if not inst.spec.policy.after:
            return False
        if inst.state is not State.WAITING:
            inst.set_state(State.WAITING, "waiting for its dependencies")
        self.waiting[inst.name] = inst
        self.changed()
        return True

    def on_event(self, event: Event) -> None:
        if self.waiting and isinstance(event, StateChanged):
            self.changed()

    def changed(self) -> None:
        """Something others may wait for changed (a state, readiness): decide again soon."""
        if self.waiting and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.decide)

    def decide(self) -> None:
        self._scheduled = False
        instances = self.supervisor.instances
        for name, inst in list(self.waiting.items()):
            if instances.get(name) is not inst or inst.state is not State.WAITING:
                del self.waiting[name]
                inst.waiting = None
        after = {name: inst.spec.policy.after for name, inst in self.waiting.items()}
        wanted = {t for templates in after.values() for t in templates}
        verdicts = may_start(after, peers(instances.values(), wanted))
        for name, why in verdicts.items():
            inst = self.waiting[name]
            if why is None:
                del self.waiting[name]
                inst.waiting = None
                log.info("%s: its dependencies are ready; starting", name)
                self.supervisor.start_now(inst)
            elif why != inst.waiting:
                inst.waiting = why
                log.info("%s waits for %s", name, why)


def peers(instances: Any, templates: set[str]) -> dict[str, list[Peer]]:
    """The instances of these templates as order.py sees them."""
    found: dict[str, list[Peer]] = {}
    for inst in instances:
        if inst.spec.template in templates:
            found.setdefault(inst.spec.template, []).append(Peer(
                inst.name, inst.state.value, inst.ready, inst.spec.policy.restart == "never", inst.last_exit))
    return found
