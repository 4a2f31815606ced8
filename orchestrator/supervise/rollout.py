"""`Rollout`: which instances of a rolling restart to stop next, batch by batch.

A batch scheduler only: the supervisor asks it what to stop (`take`), tells it when an
instance is ready on its new process (`ready`) or died before it was (`failed`), and does
all the stopping and starting itself. Ready means `READY=1` from a worker that speaks the
notify protocol, otherwise up for `min_uptime`. A failure halts the rollout: the rest keep
their old process, and the next reload (or `orch restart`) tries again.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Callable, Generic, TypeVar

from ..expand.spec import ProcessSpec

if TYPE_CHECKING:
    from .instance import Instance  # noqa: F401

T = TypeVar("T")


class Rollout(Generic[T]):
    """At most `batch` of the items are down or not yet ready at any time."""

    def __init__(self, label: str, batch: int, items: list[tuple[T, ProcessSpec | None]]):
        self.label = label
        self.batch = max(1, batch)
        self.waiting = collections.deque(items)
        self.in_flight: set[T] = set()
        self.total = len(items)
        self.halted = False

    def take(self, eligible: Callable[[T], bool]) -> list[tuple[T, ProcessSpec | None]]:
        """The items to restart now (skipping those no longer `eligible`), marked in flight."""
        chosen = []
        while len(self.in_flight) < self.batch and self.waiting:
            item, spec = self.waiting.popleft()
            if eligible(item):
                self.in_flight.add(item)
                chosen.append((item, spec))
        return chosen

    def ready(self, item: T) -> None:
        """`item` runs its new process and is ready: its slot in the batch is free."""
        self.in_flight.discard(item)

    def failed(self, item: T) -> int:
        """`item` died before it was ready: halt; returns how many keep their old process."""
        self.in_flight.discard(item)
        left = len(self.waiting)
        self.waiting.clear()
        self.halted = True
        return left

    @property
    def finished(self) -> bool:
        return not self.in_flight and not self.waiting
