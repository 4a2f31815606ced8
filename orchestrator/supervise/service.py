"""The master as a systemd `Type=notify` service: READY=1 once every instance was
started, then STATUS= counts at most once a second, and STOPPING=1 on shutdown.
A subscriber of the supervisor's events; silent unless NOTIFY_SOCKET is set."""

from __future__ import annotations

import os


from ..loop import EventLoop, Timer
from .events import Event, StateChanged
from .states import State
from .supervisor import Supervisor
from ..worker.runtime import notify


class ServiceNotifier:
    """Tells the service manager that started `orch up` how the fleet is doing."""

    def __init__(self, loop: EventLoop, supervisor: Supervisor):
        self.loop = loop
        self.supervisor = supervisor
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.ready = False
        self.stopping = False
        self._timer: Timer | None = None
        if self.enabled:
            supervisor.events.subscribe(self.on_event)

    def on_event(self, event: Event) -> None:
        if isinstance(event, StateChanged) and (event.started or event.ended):
            self.update()

    def update(self) -> None:
        """READY=1 once nothing is starting; afterwards a STATUS= line, coalesced to 1/s."""
        if not self.enabled or self.stopping:
            return
        if not self.ready:
            if any(i.state is State.STARTING for i in self.supervisor.instances.values()):
                return
            self.ready = True
            notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={self.counts()}")
            return
        if self._timer is None:
            self._timer = self.loop.call_later(1.0, self._send_status)

    def stop(self) -> None:
        if self.enabled and not self.stopping:
            notify("STOPPING=1")
        self.stopping = True

    def _send_status(self) -> None:
        self._timer = None
        notify(f"STATUS={self.counts()}")

    def counts(self) -> str:
        """"3 running, 1 backoff": instances by state."""
        counts: dict[str, int] = {}
        for inst in self.supervisor.instances.values():
            counts[inst.state.value] = counts.get(inst.state.value, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no instances"
