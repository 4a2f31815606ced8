"""Start order (pure): which waiting instances may start, from the states of the instances
of the templates each one is `after`. start_order.py runs it on the loop.

A template's instance counts as done when it is ready, or, for a one-shot template
(`restart = "never"`, a migration), when it has exited 0. A template with no instances
holds nothing up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

SHOWN = 3  # blocking instances named in a reason; the rest are counted


@dataclass(frozen=True)
class Peer:
    """What start order needs to know of one instance of a template others are after."""

    name: str
    state: str  # State.value
    ready: bool
    one_shot: bool  # its template has restart = "never": done once it exited 0
    last_exit: str | None = None


def blocking(peer: Peer) -> str | None:
    """Why `peer` holds its dependents back ("not ready", "to exit 0"), None when it does not."""
    if peer.one_shot:
        if peer.state == "exited" and peer.last_exit == "exit 0":
            return None
        return "to exit 0" + (f", last: {peer.last_exit}" if peer.state == "exited" and peer.last_exit else "")
    if peer.state == "running" and peer.ready:
        return None
    return "not ready" if peer.state in ("running", "starting") else peer.state


def waiting_for(after: Sequence[str], peers: Mapping[str, Sequence[Peer]]) -> str | None:
    """What an instance of a template `after` these templates waits for ("redis-0 (not ready),
    migrate-0 (to exit 0)"), or None when it may start."""
    found = [f"{peer.name} ({why})" for template in after for peer in peers.get(template, ())
             if (why := blocking(peer)) is not None]
    if not found:
        return None
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    return ", ".join(found[:SHOWN]) + more


def may_start(waiting: Mapping[str, Sequence[str]],
              peers: Mapping[str, Sequence[Peer]]) -> dict[str, str | None]:
    """Per waiting instance (name: its template's `after`): None if it may start now, else
    what it still waits for."""
    return {name: waiting_for(after, peers) for name, after in waiting.items()}


def stop_waves(after: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The templates in the order `orch down` stops them (pure): a template's wave comes once
    every template `after` it has stopped, so dependents go before what they depend on.
    `after` maps every template to its `after` list; a cycle (refused by validation) would
    put the rest in one last wave."""
    names = set(after) | {d for deps in after.values() for d in deps}
    dependents: dict[str, set[str]] = {name: set() for name in names}
    for name, deps in after.items():
        for dep in deps:
            if dep != name:
                dependents[dep].add(name)
    waves: list[list[str]] = []
    done: set[str] = set()
    while len(done) < len(names):
        wave = sorted(n for n in names - done if dependents[n] <= done) or sorted(names - done)
        waves.append(wave)
        done.update(wave)
    return waves
