"""The master's journal: the last events of the fleet, one flat record each, for `orch
events`, hooks and the dashboard.

A record is a dict with stable keys: `ts` (wall clock), `seq` (1, 2, ... in this master),
`kind` (one of KINDS), `instance`, `template`, then the facts of that kind (`pid`, `old`,
`new`, `exit`, `code`, `signal`, `reason`, `limit`, `value`, `error`, ...). The journal keeps
the last `capacity` records in a ring and hands every new one to its followers, in the
loop's thread; a follower must not block (a slow reader keeps its own bounded buffer).
`on_event` turns the supervisor's bus events into records.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable

from ..config.hooks import EVENT_KINDS
from .events import HandedOver, Happened, StateChanged
from .states import State

log = logging.getLogger("orch")

KINDS = EVENT_KINDS  # every kind a record can have, declared once in config/hooks.py
Record = dict[str, Any]
Follower = Callable[[Record], None]
_EXIT_LIKE = frozenset({State.BACKOFF, State.CRASHLOOP, State.EXITED, State.STARTING})


class Journal:
    """A bounded ring of records and the followers of new ones."""

    def __init__(self, capacity: int = 1000) -> None:
        self._ring: collections.deque[Record] = collections.deque(maxlen=capacity)
        self._followers: list[Follower] = []
        self._seq = 0
        self._pids: dict[str, int] = {}      # the pid each instance last started with
        self._stopping: dict[str, str] = {}  # why each stop in progress was asked for

    @property
    def seq(self) -> int:
        """The seq of the latest record (0 before the first)."""
        return self._seq

    def record(self, kind: str, instance: str | None = None, template: str | None = None,
               **facts: Any) -> Record:
        """Append one record and hand it to every follower; returns it."""
        self._seq += 1
        rec: Record = {"ts": time.time(), "seq": self._seq, "kind": kind, "instance": instance,
                       "template": template}
        rec.update((k, v) for k, v in facts.items() if k not in rec)  # a fact never hides ts or seq
        self._ring.append(rec)
        for follower in list(self._followers):
            try:
                follower(rec)
            except Exception:  # a follower's bug must never reach the code that records
                log.exception("journal follower %r failed; unsubscribed", follower)
                self._unfollow(follower)
        return rec

    def recent(self, n: int | None = None, since_seq: int | None = None) -> list[Record]:
        """The kept records, oldest first: after `since_seq` if given, the last `n` if given."""
        found = list(self._ring)
        if since_seq is not None:
            found = [r for r in found if r["seq"] > since_seq]
        if n is not None:
            found = found[-n:] if n > 0 else []
        return found

    def handover(self) -> dict[str, Any]:
        """What an upgrade's exec carries (handover/): the kept records and the numbering."""
        return {"records": list(self._ring), "seq": self._seq}

    def take_over(self, kept: dict[str, Any]) -> None:
        """The journal of the master before an upgrade's exec goes on here."""
        self._ring.extend(kept.get("records", []))
        self._seq = max(self._seq, int(kept.get("seq", 0)))

    def follow(self, callback: Follower) -> Callable[[], None]:
        """Call `callback(record)` for every new record; returns the function that stops it."""
        self._followers.append(callback)
        return lambda: self._unfollow(callback)

    def _unfollow(self, callback: Follower) -> None:
        try:
            self._followers.remove(callback)
        except ValueError:
            pass

    # --- from the supervisor's bus -----------------------------------------------------
    def on_event(self, event: object) -> None:
        """EventBus subscriber: state changes and `Happened` notes become records."""
        if isinstance(event, HandedOver):
            self._pids[event.instance.name] = event.instance.pid
        elif isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, Happened):
            inst = event.instance
            self.record(event.kind, inst.name if inst is not None else None,
                        inst.spec.template if inst is not None else event.template, **event.facts)

    def _state_changed(self, event: StateChanged) -> None:
        inst, old, new = event.instance, event.old, event.new
        name, template = inst.name, inst.spec.template
        base = {"old": old.value, "new": new.value}
        if new is State.RUNNING:
            self._pids[name] = inst.pid
            self.record("started", name, template, pid=inst.pid, restarts=inst.restarts, **base)
            return
        if new is State.STOPPING:
            self._stopping[name] = event.reason or inst.stop_reason or ""
        if old is State.STOPPING and new is State.STOPPED:
            pid = self._pids.pop(name, None)  # None: stopped before its spawn came back
            self.record("stopped", name, template, pid=pid, reason=self._stopping.pop(name, None) or None,
                        **base, **exit_facts(inst.last_exit if pid is not None else None))
            return
        if old in (State.RUNNING, State.STARTING) and new in _EXIT_LIKE and inst.pid is None:
            self.record("exited", name, template, pid=self._pids.pop(name, None) if old is State.RUNNING else None,
                        reason=inst.last_reason, restarts=inst.restarts, **base,
                        **exit_facts(event.reason or inst.last_exit))
        else:
            self.record("state", name, template, reason=event.reason, **base)
        if new is State.CRASHLOOP:
            self.record("crashloop", name, template, reason=event.reason, failures=inst.failures,
                        **base, **exit_facts(inst.last_exit))


def exit_facts(text: str | None) -> dict[str, Any]:
    """How a process ended, from the supervisor's text ("exit 3", "SIGKILL", "exit 1,
    max_requests", "exec failed: ..."): `exit` (the text), `code` and `signal` (pure)."""
    code: int | None = None
    signame: str | None = None
    head = (text or "").split(",", 1)[0].strip()
    if head.startswith("exit ") and head[5:].lstrip("-").isdigit():
        code = int(head[5:])
    elif head.startswith("SIG") and head[3:].isalpha():
        signame = head
    elif head.startswith("signal ") and head[7:].isdigit():
        signame = head
    return {"exit": text, "code": code, "signal": signame}
