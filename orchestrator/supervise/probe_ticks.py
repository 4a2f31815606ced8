"""Probe checks that fall due, gathered into ticks: one loop timer per tick that has any
due, however many probes fall into it. 5,000 instances probed every 10 s are 500 checks a
second; with a timer each the loop woke for almost every one (an epoll_wait, a context
switch and a pass over the heap each time), with ticks of 50 ms it wakes 20 times a second
and runs the due checks in a batch. A check runs at most half a tick (25 ms) before or after
its due time, rounded to the nearest tick so the spacing of a probe's checks does not drift.
A tick's batch first goes to `before` (the prober answers all its local tcp probes in one
netlink round there, supervise/listen_lookup.py), then to `run` one entry at a time."""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable

from ..loop import EventLoop

log = logging.getLogger("orch")
TICK = 0.05  # seconds


class Ticks:
    """`add(delay, *args)` runs `run(*args)` about `delay` seconds later, batched by tick;
    the int it returns identifies that call (its caller compares it to drop cancelled ones)."""

    def __init__(self, loop: EventLoop, run: Callable[..., None], tick: float = TICK,
                 before: Callable[[list[tuple[Any, ...]]], None] | None = None) -> None:
        self.loop = loop
        self.run = run
        self.before = before
        self.tick = tick
        self.slots: dict[int | None, list[tuple[Any, ...]]] = {}  # None: due now
        self.tokens = itertools.count(1)

    def add(self, delay: float, *args: Any) -> int:
        token = next(self.tokens)
        now = self.loop.time()
        key = round((now + delay) / self.tick) if delay > 0 else None
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = []
            if key is None:
                self.loop.call_soon(lambda: self._fire(None))
            else:
                self.loop.call_later(key * self.tick - now, lambda: self._fire(key))
        slot.append((token, *args))
        return token

    def _fire(self, key: int | None) -> None:
        entries = self.slots.pop(key, [])
        if self.before is not None:
            try:
                self.before(entries)
            except Exception:  # noqa: BLE001 - the checks still run, each on its own
                log.exception("internal error before a tick of probe checks (the master keeps running)")
        for entry in entries:
            try:
                self.run(*entry)
            except Exception:  # noqa: BLE001 - one probe's bug must not drop the rest of the batch
                log.exception("internal error in a probe check (the master keeps running)")
