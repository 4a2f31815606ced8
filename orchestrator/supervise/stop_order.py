"""Stop order on the loop: a graceful stop of the whole fleet (`orch down`, SIGTERM) stops
the templates in waves (order.py `stop_waves`), dependents before what they are `after`, each
wave once the one before it has no process left. Without `after` it is one wave: every
instance at once, as before. The master's graceful_timeout still bounds the whole stop."""

from __future__ import annotations

import logging
from typing import Any

from .events import Event, StateChanged
from .instance import Instance
from .order import stop_waves
from .states import ALIVE, Then

log = logging.getLogger("orch")


class StopOrder:
    """One graceful stop of every instance, wave by wave."""

    def __init__(self, supervisor: Any) -> None:
        self.supervisor = supervisor
        self.waves: list[list[str]] = []
        self.current: set[str] = set()
        self._subscribed = False
        self._busy = False  # stopping a wave: its own state changes must not start the next

    def begin(self) -> None:
        """Stop the first wave now, and each next one once the wave before it is down."""
        after: dict[str, tuple[str, ...]] = {}
        for inst in self.supervisor.instances.values():
            after.setdefault(inst.spec.template, inst.spec.policy.after)
        self.waves = stop_waves(after)
        if len(self.waves) > 1:
            log.info("stopping in %d waves, dependents first: %s", len(self.waves),
                     " then ".join(", ".join(wave) for wave in self.waves))
            if not self._subscribed:
                self._subscribed = True
                self.supervisor.events.subscribe(self.on_event)
        self.current = set()
        self._next()

    def on_event(self, event: Event) -> None:
        if not self._busy and self.current and isinstance(event, StateChanged) and event.instance.spec.template in self.current \
                and event.new not in ALIVE:
            self._next()

    def _members(self, templates: set[str]) -> list[Instance]:
        return [i for i in self.supervisor.instances.values() if i.spec.template in templates]

    def _next(self) -> None:
        """Move on while the current wave has nothing alive: stop the next one."""
        while not any(i.state in ALIVE for i in self._members(self.current)):
            if not self.waves:
                self.current = set()
                return
            self.current = set(self.waves.pop(0))
            self._busy = True
            try:
                for inst in self._members(self.current):
                    self.supervisor.stop(inst, Then.STOP)
            finally:
                self._busy = False
