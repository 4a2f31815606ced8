"""The state file's groups kept as JSON text, one cached row per running main process, so
that a write after a crash formats the one changed row instead of the whole fleet.

Measured at N = 5,000 (issue 31, load 2-7): building and encoding every `[pid, start]` row
with `json.dumps` took 10-120 ms of the loop per write, a write followed every crash, and a
crash replacement that landed meanwhile waited for it (p99 114 ms). Joining the cached rows
is one C call over the fleet; the Python work is per changed row.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..procfs import start_time


class StateRows:
    """`[pid, start time]` text of every main process in `by_pid`, rebuilt only for the pids
    that appeared, or were `touch`ed (a new process under a pid seen before), since the last sync."""

    def __init__(self) -> None:
        self._rows: dict[int, str] = {}
        self._dirty: set[int] = set()
        self.built = 0  # rows formatted since the start: what a write cost in Python work

    def touch(self, pid: int | None) -> None:
        """The process under `pid` changed (it started): format its row again at the next sync."""
        if pid is not None:
            self._dirty.add(pid)

    def sync(self, by_pid: dict[int, Any]) -> None:
        """Make the rows those of `by_pid` (pid -> instance with .start_ticks, read once here)."""
        rows = self._rows
        for pid in rows.keys() - by_pid.keys():
            del rows[pid]
        changed = (by_pid.keys() - rows.keys()) | (self._dirty & by_pid.keys())
        self._dirty = set()
        for pid in changed:
            inst = by_pid[pid]
            if inst.start_ticks is None:
                inst.start_ticks = start_time(pid)  # None if it is gone already: its exit follows
            rows[pid] = f"[{pid}, {json.dumps(inst.start_ticks)}]"
            self.built += 1

    def __len__(self) -> int:
        return len(self._rows)

    def text(self) -> str:
        """The rows as the body of a JSON list."""
        return ", ".join(self._rows.values())


def record_text(head: dict[str, Any], groups: str | Iterable[tuple[int, int | None]]) -> str:
    """The state file's JSON: `head`'s keys, then "groups" from cached row text or from pairs."""
    if not isinstance(groups, str):
        groups = ", ".join(f"[{pid}, {json.dumps(start)}]" for pid, start in groups)
    body = json.dumps(head)[1:-1]
    return "{" + body + (", " if body else "") + f'"groups": [{groups}]}}'
