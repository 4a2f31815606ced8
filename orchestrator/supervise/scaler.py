"""Replicas that follow the backlog: every autoscaled matrix cell runs its first `count`
replicas, and `count` follows the cell's queue (autoscale.py decides, backlog.py reads).

The expansion renders each cell's `max` replicas; `desired` keeps the ones a cell runs, for
the master's start and every reload, so a reload and a scaling step diff against the same
fleet. A step up starts the next replicas; a step down stops the highest ones through the
plan path a reload uses (graceful: the consumer finishes and acknowledges the message in hand,
takes no new one, and exits). Each source is read at most once a second, never waited on;
one that cannot be read keeps the cell's count, and says so once per change of state."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config.scaling import Autoscale
from ..expand.spec import ProcessSpec
from ..loop import EventLoop, Timer
from ..plan import Plan
from .autoscale import Bounds, CellState, Decision, decide, start_state
from .backlog import Reading
from .states import Then

log = logging.getLogger("orch")
PERIOD = 1.0  # seconds between two readings of one source
REDIS_LIST_CONSUMER = "orchestrator.queues.redis:QueueConsumer"


@dataclass
class Cell:
    """One autoscaled matrix cell: its replicas' specs (replica order), state and last decision."""

    name: str
    template: str
    auto: Autoscale
    specs: list[ProcessSpec]
    state: CellState
    pinned: int | None = None
    decision: Decision | None = None
    decided_at: float | None = None  # wall clock
    latest: str = ""  # the reason of the newest decision, changed or not
    wake: Timer | None = None

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.auto.min, self.auto.max, self.auto.per)


@dataclass
class Source:
    """One queue read for every cell that follows it."""

    key: tuple[Any, ...]
    auto: Autoscale
    spec: ProcessSpec
    backlog: int | None = None
    error: str | None = None
    reading: Reading | None = None
    read_at: float = -math.inf
    cells: list[str] = field(default_factory=list)


class Scaler:
    """Every autoscaled cell of one master; `desired` feeds start and reloads."""

    def __init__(self, supervisor: Any, loop: EventLoop,
                 on_scaled: Callable[..., None] | None = None) -> None:
        self.supervisor = supervisor
        self.loop = loop
        self.on_scaled = on_scaled  # the journal's "scaled" record, when the master has one
        self.cells: dict[str, Cell] = {}
        self.sources: dict[tuple[Any, ...], Source] = {}
        self.pins: dict[str, int] = {}  # cell: count, from `orch scale`
        self.timer: Timer | None = None
        self.closed = False

    # --- the fleet's shape -------------------------------------------------------------------
    def desired(self, specs: list[ProcessSpec]) -> list[ProcessSpec]:
        """The specs to run: every fixed instance, and each autoscaled cell's first `count`.
        Cells are (re)built from `specs`; a cell's count carries over, brought inside new bounds."""
        grouped: dict[str, list[ProcessSpec]] = {}
        for spec in specs:
            if spec.autoscale is not None:
                grouped.setdefault(spec.autoscale.cell, []).append(spec)
        cells: dict[str, Cell] = {}
        for name, members in grouped.items():
            members.sort(key=lambda s: s.replica)
            old = self.cells.pop(name, None)
            auto = members[0].autoscale
            cell = Cell(name, members[0].template, auto, members, start_state(Bounds(auto.min, auto.max, auto.per)))
            if old is not None:
                cell.state, cell.decision, cell.decided_at = old.state, old.decision, old.decided_at
                if old.wake is not None:  # its timer names the old Cell: the next reading decides
                    old.wake.cancel()
            cell.pinned = self.pins.get(name)
            cells[name] = cell
            self._settle(cell, None if old is None else old.auto)
        for gone in self.cells.values():
            if gone.wake is not None:
                gone.wake.cancel()
        self.cells = cells
        self._index_sources()
        if self.cells and self.timer is None and not self.closed:
            self.timer = self.loop.call_later(0, self._tick)
        return [s for s in specs if s.autoscale is None or s.replica < cells[s.autoscale.cell].state.count]

    def preview(self, specs: list[ProcessSpec]) -> list[ProcessSpec]:
        """What `desired` would keep of `specs`, changing nothing (for `orch diff`)."""
        out: list[ProcessSpec] = []
        for spec in specs:
            auto = spec.autoscale
            if auto is None:
                out.append(spec)
                continue
            cell = self.cells.get(auto.cell)
            count = auto.min if cell is None else cell.state.count
            pinned = self.pins.get(auto.cell)
            count = min(pinned, auto.max) if pinned is not None else max(auto.min, min(auto.max, count))
            if spec.replica < count:
                out.append(spec)
        return out

    def _settle(self, cell: Cell, before: Autoscale | None) -> None:
        """A new or changed cell: bounds (and a pin) apply at once, before any reading."""
        count = cell.state.count
        state, decision = decide(cell.state, None, self.loop.time(), cell.bounds, cell.auto.scale, cell.pinned)
        if decision.changed:
            cell.state = state
            if before is not None:
                self._record(cell, decision, count)
            cell.decision, cell.decided_at = decision, _now()
        elif before is None:
            cell.decision = Decision(count, None, f"started at {count}", False)
            cell.decided_at = _now()

    def _index_sources(self) -> None:
        wanted: dict[tuple[Any, ...], Source] = {}
        for cell in self.cells.values():
            key = cell.auto.source_key
            source = wanted.get(key) or self.sources.get(key) or Source(key, cell.auto, cell.specs[0])
            source.auto, source.spec = cell.auto, cell.specs[0]
            source.cells = [] if key not in wanted else source.cells
            source.cells.append(cell.name)
            wanted[key] = source
        for key, source in self.sources.items():
            if key not in wanted and source.reading is not None:
                source.reading.cancel()
        self.sources = wanted

    # --- reading and deciding -----------------------------------------------------------------
    def _tick(self) -> None:
        self.timer = None
        if self.closed or not self.cells:
            return
        now = self.loop.time()
        for source in self.sources.values():
            if source.reading is None and now - source.read_at >= PERIOD - 0.01:
                self._read(source)
        self.timer = self.loop.call_later(PERIOD / 4, self._tick)

    def _read(self, source: Source) -> None:
        source.read_at = self.loop.time()
        spec = source.spec
        env = None
        if source.auto.source.kind == "command":
            env = dict(os.environ) if spec.inherit_env else {}
            env.update(spec.env)
            env.update(ORCH_CELL=source.cells[0] if source.cells else "", ORCH_TEMPLATE=spec.template)
        reading = Reading(self.loop, source.auto.source, lambda n, why: self._read_done(source, reading, n, why),
                          env, spec.cwd if source.auto.source.kind == "command" else None, self._held(source))
        source.reading = reading
        reading.start()

    def _held(self, source: Source) -> tuple[str, ...]:
        """The processing lists of the Redis list consumers reading this source: a message a
        killed replica held waits there for a consumer of the queue, so it counts as backlog
        (with min = 0, nothing else would start one)."""
        if source.auto.source.kind != "redis":
            return ()
        return tuple(f"{source.auto.source.key}:processing:{spec.name}" for name in source.cells
                     if (cell := self.cells.get(name)) is not None for spec in cell.specs
                     if spec.python is not None and spec.python.target == REDIS_LIST_CONSUMER)

    def _read_done(self, source: Source, reading: Reading, backlog: int | None, why: str | None) -> None:
        if source.reading is not reading:
            return
        source.reading = None
        if self.sources.get(source.key) is not source:
            return
        if (why is None) != (source.error is None):  # one line per change of state
            if why is not None:
                log.warning("backlog of %s unreadable (%s): keeping the current count", source.auto.describe(), why)
            else:
                log.info("backlog of %s readable again: %d", source.auto.describe(), backlog)
        source.backlog, source.error = backlog, why
        for name in source.cells:
            cell = self.cells.get(name)
            if cell is not None:
                self._decide(cell, backlog)

    def _decide(self, cell: Cell, backlog: int | None) -> None:
        before = cell.state.count
        cell.state, decision = decide(cell.state, backlog, self.loop.time(), cell.bounds, cell.auto.scale,
                                      cell.pinned)
        cell.latest = decision.reason  # what it thinks now (waiting, steady, unreadable)
        if cell.decision is None or decision.changed:  # the last step, shown as the last decision
            cell.decision, cell.decided_at = decision, _now()
        if cell.wake is not None:
            cell.wake.cancel()
            cell.wake = None
        if decision.wake_at is not None:  # a wait ends before the next reading: decide on time
            cell.wake = self.loop.call_later(max(0.0, decision.wake_at - self.loop.time()),
                                             lambda: self._woken(cell))
        if decision.changed:
            self._record(cell, decision, before)
            self.apply(cell)

    def _woken(self, cell: Cell) -> None:
        cell.wake = None
        source = self.sources.get(cell.auto.source_key)
        if self.cells.get(cell.name) is cell and source is not None and source.error is None \
                and source.backlog is not None:
            self._decide(cell, source.backlog)

    def _record(self, cell: Cell, decision: Decision, before_count: int) -> None:
        log.info("scale %s: %d -> %d (%s)", cell.name, before_count, decision.count, decision.reason)
        if self.on_scaled is not None:
            self.on_scaled(template=cell.template, cell=cell.name, before=before_count, after=decision.count,
                           wanted=decision.wanted, reason=decision.reason)

    # --- applying ---------------------------------------------------------------------------
    def apply(self, cell: Cell) -> None:
        """Start the cell's first `count` replicas that do not run; stop, highest first, the
        ones past it (the graceful stop a reload uses, REMOVE once gone)."""
        if self.closed:  # shutting down: nothing starts or stops for scaling any more
            return
        running = self.supervisor.running_view()
        count = cell.state.count
        start = tuple(s for s in cell.specs[:count] if s.name not in running)
        stop = tuple(s.name for s in reversed(cell.specs[count:]) if s.name in running)
        if start or stop:
            self.supervisor.apply(Plan(start=start, stop=stop))
            self.supervisor.flush()

    # --- orch scale -------------------------------------------------------------------------
    def pin(self, target: str, count: int | None) -> list[dict[str, Any]]:
        """Pin the cells of a template (or one cell) at `count`, or (None) let them follow again."""
        chosen = [c for c in self.cells.values() if target in (c.name, c.template)]
        if not chosen:
            known = sorted({c.template for c in self.cells.values()})
            raise ValueError(f"no autoscaled template or cell {target!r} (autoscaled templates: "
                             f"{', '.join(known) or 'none'})")
        for cell in chosen:
            if count is not None and count > cell.auto.max:
                raise ValueError(f"{cell.name}: {count} is past replicas.max ({cell.auto.max}); "
                                 "raise it in the config")
        for cell in chosen:
            if count is None:
                self.pins.pop(cell.name, None)
            else:
                self.pins[cell.name] = count
            cell.pinned = count
            source = self.sources.get(cell.auto.source_key)
            self._decide(cell, source.backlog if source is not None and source.error is None else None)
            text = "following the backlog again (orch scale --auto)" if count is None else \
                f"pinned at {cell.state.count} by orch scale"
            cell.decision, cell.decided_at = Decision(cell.state.count, None, text, False), _now()
        return [self.row(c) for c in chosen]

    # --- what status and metrics show ----------------------------------------------------------
    def row(self, cell: Cell) -> dict[str, Any]:
        source = self.sources.get(cell.auto.source_key)
        names = {s.name for s in cell.specs}
        now = sum(1 for n in names if (i := self.supervisor.instances.get(n)) is not None
                  and i.pid is not None and i.then is not Then.REMOVE)
        decision = cell.decision
        return {"cell": cell.name, "template": cell.template, "now": now, "desired": cell.state.count,
                "min": cell.auto.min, "max": cell.auto.max, "per": cell.auto.per,
                "backlog": source.backlog if source is not None else None,
                "source": cell.auto.describe(), "source_error": source.error if source is not None else None,
                "readable": source is None or source.error is None, "pinned": cell.pinned, "reason": decision.reason if decision else "", "now_reason": cell.latest,
                "decided_at": cell.decided_at}

    def status(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """A row per cell (`orch scale`, status, queues, metrics, top); with `names` (a status
        of some instances), only the cells those instances belong to."""
        chosen = set(names) if names is not None else None
        return [self.row(c) for c in self.cells.values()
                if chosen is None or any(s.name in chosen for s in c.specs)]

    def close(self) -> None:
        """Stop reading and deciding (shutdown): no step is applied from now on."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for source in self.sources.values():
            if source.reading is not None:
                source.reading.cancel()
        for cell in self.cells.values():
            if cell.wake is not None:
                cell.wake.cancel()


def _now() -> float:
    import time
    return time.time()
