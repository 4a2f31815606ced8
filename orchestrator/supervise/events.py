"""Events the supervisor emits: every state change, and policies changed in place.

Limits, the state file, the systemd status and the log subscribe to one `EventBus`
instead of hook lists; an instance's state changes only through `Instance.set_state`,
which checks the transition table and emits `StateChanged`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from .states import State

log = logging.getLogger("orch")


@dataclass(frozen=True)
class StateChanged:
    """`instance` went from `old` to `new`; its pid is None once the process is gone."""

    instance: Any  # the Instance (typed loosely: instance.py imports this module)
    old: State
    new: State
    reason: str | None = None

    @property
    def started(self) -> bool:
        """A new process is running (the spawn was acknowledged)."""
        return self.new is State.RUNNING

    @property
    def ended(self) -> bool:
        """The instance's process (if it had one) is gone."""
        return self.instance.pid is None and self.old in (State.RUNNING, State.STOPPING)


@dataclass(frozen=True)
class HandedOver(StateChanged):
    """A process the master had before an upgrade's exec (handover/) runs on under the new
    code: subscribers arm for it as for a start; the journal records no start, since none happened."""


@dataclass(frozen=True)
class PolicyChanged:
    """A reload changed the instance's supervision policy without restarting it."""

    instance: Any


@dataclass(frozen=True)
class OpsIdle:
    """The last tracked operation (a reload's stop, a rollout) finished: a queued reload may go."""


@dataclass(frozen=True)
class Notified:
    """The instance's process said READY=1 or WATCHDOG=1 on the notify socket (notify probes)."""

    instance: Any
    ready: bool
    watchdog: bool


@dataclass(frozen=True)
class SpawnerLost:
    """The spawner's socket reached EOF: it died, and every instance with it."""

    spawner: Any


@dataclass(frozen=True)
class Happened:
    """Something worth a line in the journal (supervise/journal.py KINDS) that is no state
    change: a limit acted, a probe failed, a reload, a scaling step. `instance` is the
    Instance concerned, if one is; `template` names the template when no instance is."""

    kind: str
    instance: Any = None
    facts: dict = field(default_factory=dict)
    template: str | None = None


Event = Union[StateChanged, PolicyChanged, OpsIdle, SpawnerLost, Notified, Happened]
Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out in subscription order; subscribers run in the loop's thread."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            subscriber(event)


def log_transition(event: object) -> None:
    """Every state change at debug level: `log_level = "debug"` shows the full history."""
    if isinstance(event, StateChanged) and log.isEnabledFor(logging.DEBUG):
        log.debug("%s: %s -> %s%s", event.instance.name, event.old.value, event.new.value,
                  f" ({event.reason})" if event.reason else "")
