"""Nothing left behind after a crash: the state file of running process groups, and the
start-up sweep that ends what a SIGKILLed (or OOM-killed) master and spawner left alive.

Normally the spawner ends every group when the master dies. Only when both die at once
(kill -9 of the whole group, the OOM killer) can a worker's grandchildren outlive them.
The next `orch up`, holding the pidfile lock, reads the state file and SIGKILLs every
process still in a recorded group. Start times guard against recycled pids: a recorded
leader alive with another start time is someone else's group, and a member that started
before the recorded start is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ..observe.procfs import all_pids, is_running, start_time, stat_fields

log = logging.getLogger("orch")


def state_path(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".state")


def write_state(pidfile: Path, spawner: int, groups: Iterable[tuple[int, int | None]]) -> None:
    """Record (leader pid, start time) of every running group, atomically."""
    record = {"master": os.getpid(), "spawner": [spawner, start_time(spawner)],
              "groups": [[pid, start] for pid, start in groups]}
    path = state_path(pidfile)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


class StateRecorder:
    """Keeps the state file in step with the running groups: a subscriber of the
    supervisor's events, writing at most once per 50 ms burst, never on the spawn path."""

    DELAY = 0.05

    def __init__(self, loop: Any, supervisor: Any, pidfile: Path, spawner_pid: Callable[[], int]):
        self.loop = loop
        self.supervisor = supervisor
        self.pidfile = pidfile
        self.spawner_pid = spawner_pid
        self._timer: Any = None
        supervisor.events.subscribe(self.on_event)

    def on_event(self, event: Any) -> None:
        if getattr(event, "started", False) or getattr(event, "ended", False):
            self.changed()

    def changed(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self.DELAY, self.write)

    def write(self) -> None:
        self._timer = None
        groups = []
        for inst in self.supervisor.by_pid.values():
            if inst.start_ticks is None and inst.pid is not None:
                inst.start_ticks = start_time(inst.pid)
            groups.append((inst.pid, inst.start_ticks))
        try:
            write_state(self.pidfile, self.spawner_pid(), groups)
        except OSError as exc:
            log.warning("cannot write the state file: %s", exc)

    def close(self, clean: bool) -> None:
        """Stop writing; a clean exit leaves nothing to sweep, so the file goes."""
        if self._timer is not None:
            self._timer.cancel()
        if clean:
            state_path(self.pidfile).unlink(missing_ok=True)


def leftovers(record: dict) -> list[tuple[int, str]]:
    """(pid, why) of every live process that belongs to a recorded group (reads /proc)."""
    found: list[tuple[int, str]] = []
    spawner, spawner_start = record.get("spawner") or (None, None)
    if spawner and spawner_start is not None and start_time(spawner) == spawner_start:
        found.append((spawner, "the old spawner"))
    groups: dict[int, int] = {}
    for leader, started in record.get("groups", []):
        if started is None:
            continue
        now = start_time(leader)
        if now is not None and now != started:
            continue  # the pid was recycled: that group is someone else's
        groups[leader] = started
    if not groups:
        return found
    for pid in all_pids():
        fields = stat_fields(pid)
        if not fields or pid == os.getpid():
            continue
        group, started = int(fields[2]), int(fields[19])
        if group in groups and started >= groups[group]:
            found.append((pid, f"process group {group}"))
    return found


def end_leftovers(pidfile: Path, timeout: float = 5.0) -> int:
    """SIGKILL what a previous master left alive; returns how many. Call with the pidfile locked."""
    path = state_path(pidfile)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    victims = leftovers(record)
    for pid, why in victims:
        log.warning("ending pid %d left behind by the previous master %s (%s)", pid, record.get("master"), why)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while victims and time.monotonic() < deadline:
        victims = [(pid, why) for pid, why in victims if is_running(pid)]
        time.sleep(0.01)
    path.unlink(missing_ok=True)
    return len(victims)
