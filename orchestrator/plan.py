"""`reconcile`: the pure diff of desired specs against running instances, as a `Plan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol

from .expand.spec import ProcessSpec, changed_fields


class Hashes(Protocol):
    """What reconcile reads of a running instance: a `Running`, or the instance's target
    `ProcessSpec` itself (the supervisor's view: no object made per instance at each reload)."""

    @property
    def process_hash(self) -> str: ...

    @property
    def policy_hash(self) -> str: ...


@dataclass(frozen=True)
class Running:
    """What reconcile needs to know of a running instance."""

    process_hash: str
    policy_hash: str


@dataclass(frozen=True)
class Plan:
    """What a reload does: start new names, stop gone ones, restart changed processes,
    update policies in place, and keep the rest untouched."""

    start: tuple[ProcessSpec, ...] = ()
    stop: tuple[str, ...] = ()
    restart: tuple[ProcessSpec, ...] = ()
    update: tuple[ProcessSpec, ...] = ()
    keep: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.start or self.stop or self.restart or self.update)

    def counts(self) -> dict[str, int]:
        return {"start": len(self.start), "stop": len(self.stop), "restart": len(self.restart),
                "update": len(self.update), "keep": len(self.keep)}


def reconcile(desired: Iterable[ProcessSpec], running: Mapping[str, Hashes]) -> Plan:
    """Diff by name: a new name starts, a missing name stops, a changed process hash restarts,
    a changed policy hash alone is applied in place, and an identical spec is kept."""
    start: list[ProcessSpec] = []
    restart: list[ProcessSpec] = []
    update: list[ProcessSpec] = []
    keep: list[str] = []
    wanted: set[str] = set()
    for spec in desired:
        wanted.add(spec.name)
        current = running.get(spec.name)
        if current is None:
            start.append(spec)
        elif current.process_hash != spec.process_hash:
            restart.append(spec)
        elif current.policy_hash != spec.policy_hash:
            update.append(spec)
        else:
            keep.append(spec.name)
    stop = [name for name in running if name not in wanted]
    return Plan(tuple(start), tuple(stop), tuple(restart), tuple(update), tuple(keep))


def describe(plan: Plan, old: Mapping[str, ProcessSpec]) -> list[str]:
    """Readable lines for `orch diff`: `+ start`, `- stop`, `~ restart` (fields), `= update` (fields)."""
    lines = [f"+ {s.name}" for s in plan.start]
    lines += [f"- {name}" for name in plan.stop]
    for prefix, specs in (("~", plan.restart), ("=", plan.update)):
        for spec in specs:
            before = old.get(spec.name)
            fields = ", ".join(changed_fields(before, spec)) if before else ""
            lines.append(f"{prefix} {spec.name}" + (f" ({fields})" if fields else ""))
    return lines
