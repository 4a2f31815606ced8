"""The last hour of CPU and memory of every instance, for the dashboard's charts, at a fixed
cost per instance: a ring of SLOTS samples (2 bytes of CPU, 4 of RSS: about 1 KiB per
instance, 5 MiB at 5,000), filled every STEP seconds.

The fleet is sampled in slices, one each TICK, so no turn of the loop reads /proc for the
whole fleet at once; a sample reads what `orch status` reads (supervisor.tree_usage) and
its CPU is the average over the step, from the tree's own tick count."""

from __future__ import annotations

import math
import time
from array import array
from typing import Any, Callable, Mapping

from ..loop import EventLoop, Timer
from ..procfs import CLOCK_TICKS

STEP = 20.0  # seconds between two samples of one instance
SLOTS = 180  # one hour of them
TICK = 1.0  # seconds between two slices
NO_PROCESS = 0xFFFF  # the CPU slot of a sample taken while the instance ran nothing
CPU_MAX = 0xFFFE  # tenths of a percent: 6,553% (65 busy cores), clamped above
RSS_MAX = 0xFFFFFFFF  # KiB: 4 TiB, clamped above


class Ring:
    """One instance's samples, oldest overwritten first."""

    __slots__ = ("cpu", "rss", "head", "count", "last", "pid", "ticks", "at")

    def __init__(self) -> None:
        self.cpu = array("H", bytes(2 * SLOTS))
        self.rss = array("I", bytes(4 * SLOTS))
        self.head = 0  # the slot the next sample goes to
        self.count = 0
        self.last = 0.0  # wall time of the newest sample
        self.pid: int | None = None  # the process the tick count below belongs to
        self.ticks = 0
        self.at = 0.0  # monotonic time of that tick count

    def add(self, wall: float, cpu: float | None, rss: int) -> None:
        """One sample; `cpu` None: no process ran."""
        self.cpu[self.head] = NO_PROCESS if cpu is None else min(CPU_MAX, max(0, round(cpu * 10)))
        self.rss[self.head] = min(RSS_MAX, max(0, rss // 1024))
        self.head = (self.head + 1) % SLOTS
        self.count = min(SLOTS, self.count + 1)
        self.last = wall

    def series(self, step: float = STEP) -> dict[str, list[Any]]:
        """Oldest first: wall times, CPU % (None without a process) and RSS bytes."""
        first = (self.head - self.count) % SLOTS
        order = [(first + i) % SLOTS for i in range(self.count)]
        cpu = [None if self.cpu[i] == NO_PROCESS else self.cpu[i] / 10 for i in order]
        rss = [None if self.cpu[i] == NO_PROCESS else self.rss[i] * 1024 for i in order]
        ts = [round(self.last - (self.count - 1 - k) * step, 1) for k in range(self.count)]
        return {"ts": ts, "cpu": cpu, "rss": rss}


class History:
    """Samples every instance of `instances()` once per `step`, a slice per TICK."""

    def __init__(self, loop: EventLoop, instances: Callable[[], Mapping[str, Any]],
                 usage: Callable[[int], tuple[int, int, int]], step: float = STEP,
                 wall: Callable[[], float] = time.time):
        self.loop = loop
        self.instances = instances
        self.usage = usage
        self.step = step
        self.wall = wall
        self.rings: dict[str, Ring] = {}
        self.samples = 0  # taken so far (for the bench and tests)
        self._order: list[str] = []
        self._cursor = 0
        self._timer: Timer | None = loop.call_later(0, self._tick)

    def _tick(self) -> None:
        self._timer = self.loop.call_later(TICK, self._tick)
        fleet = self.instances()
        if self._cursor >= len(self._order):  # a new round: this round's names, and forget the gone
            self._order = list(fleet)
            self._cursor = 0
            for name in [n for n in self.rings if n not in fleet]:
                del self.rings[name]
            now, wall = self.loop.time(), self.wall()
            for name in [n for n in self._order if n not in self.rings]:  # new: a first sample now
                self._sample(name, fleet[name], now, wall)
        share = max(1, math.ceil(len(self._order) * TICK / self.step))
        chunk = self._order[self._cursor:self._cursor + share]
        self._cursor += share
        now, wall = self.loop.time(), self.wall()
        for name in chunk:
            inst = fleet.get(name)
            if inst is not None:
                self._sample(name, inst, now, wall)

    def _sample(self, name: str, inst: Any, now: float, wall: float) -> None:
        ring = self.rings.get(name)
        if ring is None:
            ring = self.rings[name] = Ring()
        pid = inst.pid
        if pid is None:
            ring.pid = None
            ring.add(wall, None, 0)
            self.samples += 1
            return
        rss, ticks, _ = self.usage(pid)
        if ring.pid != pid:  # a new process: its CPU is counted from its start
            ring.pid, ring.ticks, ring.at = pid, 0, getattr(inst, "started_at", None) or now
        elapsed = now - ring.at
        cpu = 100.0 * (ticks - ring.ticks) / CLOCK_TICKS / elapsed if elapsed > 0 else 0.0
        ring.ticks, ring.at = ticks, now
        ring.add(wall, max(0.0, cpu), rss)
        self.samples += 1

    def series(self, name: str) -> dict[str, list[Any]]:
        ring = self.rings.get(name)
        return ring.series(self.step) if ring is not None else {"ts": [], "cpu": [], "rss": []}

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
