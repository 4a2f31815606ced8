"""New code for preloaded workers without a restart of the master (`orch reload --code`, a
template's `code_watch`): the spawner starts fresh zygotes that import the code on disk now
(spawn/code_reload.py); once every one of them has imported, the instances roll onto them in
batches of their template's `max_unavailable`, each batch ready before the next (rolling.py),
and each old zygote goes with its last worker. An import error moves nothing and says where
it is, in the user's file."""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable

from ..loop import EventLoop, Timer
from .launch import zygote_key
from .states import ALIVE

log = logging.getLogger("orch")
IMPORT_TIMEOUT = 120.0  # seconds the new code may take to import before the reload is given up
Done = Callable[[dict[str, Any]], None]


class CodeReloader:
    """The code reloads of one master: asked of the spawner, answered by "preloaded". A
    request's `on_done` hears the outcome once the new code imported (or did not), and once
    more, with "halted", if the roll onto it halts."""

    def __init__(self, supervisor: Any, loop: EventLoop, stopping: Callable[[], bool] = lambda: False) -> None:
        self.supervisor = supervisor
        self.loop = loop
        self.stopping = stopping  # the master's: no reload while it shuts down
        self._tokens = itertools.count(1)
        self.pending: dict[int, tuple[str, list[str], Done, Timer]] = {}
        self.count = 0
        self.last_error: str | None = None
        supervisor.launcher.answers["preloaded"] = self._answered

    def request(self, names: list[str], label: str, on_done: Done) -> None:
        """Renew the zygotes of these instances (the preloaded ones among them) and roll them."""
        if self.stopping():
            on_done({"applied": False, "error": "shutting down"})
            return
        instances = [self.supervisor.instances[n] for n in names if n in self.supervisor.instances]
        keyed = [(inst, zygote_key(inst.target)) for inst in instances]
        keyed = [(inst, key) for inst, key in keyed if key is not None]
        if not keyed:
            on_done({"applied": False, "error": f"{label}: no preloaded instance (preload = true) to "
                                                "give new code; the others read it at their next start"})
            return
        keys = list(dict.fromkeys(key for _, key in keyed))
        token = next(self._tokens)
        timer = self.loop.call_later(IMPORT_TIMEOUT, lambda: self._overdue(token))
        self.pending[token] = (label, [inst.name for inst, _ in keyed], on_done, timer)
        log.info("reload --code (%s): %d new zygotes importing for %d instances", label, len(keys), len(keyed))
        try:
            self.supervisor.spawner.preload(token, keys)
        except OSError as exc:  # the spawner is gone: its EOF brings the fleet back
            self._finish(token, [f"the spawner did not take the request: {exc}"])

    def _revert(self, token: int, label: str, why: str, on_done: Done) -> None:
        """The roll halted: fork from the old zygotes again; `on_done` hears of it a second time."""
        log.warning("reload --code (%s): the roll halted; new processes fork from the old code again", label)
        self.supervisor.spawner.preload_revert(token)
        on_done({"applied": False, "halted": True, "error": f"{why}; new processes fork from the old code again"})

    def carried(self, on_halt: Any) -> list[Any] | None:
        """[token, label] of a rollout's halt if it rolls new code (what crosses an upgrade's
        exec: the spawner keeps both zygotes of each key, so only this is the master's)."""
        return [on_halt.token, on_halt.label] if isinstance(on_halt, CodeRoll) else None

    def take_over(self, saved: list[Any], on_done: Done) -> CodeRoll:
        """The halt of a code reload's roll an upgraded master had begun; `on_done` tells the
        client still waiting for it (handover/resume.py finds its carried wait by token)."""
        token, label = saved
        return CodeRoll(self, int(token), str(label), on_done)

    def _answered(self, event: tuple[Any, ...]) -> None:
        self._finish(event[1], list(event[2]))

    def _overdue(self, token: int) -> None:
        if token in self.pending:
            self.supervisor.spawner.preload_abort(token)
            self._finish(token, [f"the new code did not finish importing within {IMPORT_TIMEOUT:.0f}s"])

    def _finish(self, token: int, errors: list[str]) -> None:
        entry = self.pending.pop(token, None)
        if entry is None:
            return  # given up already (overdue)
        label, names, on_done, timer = entry
        timer.cancel()
        if errors:
            self.last_error = "; ".join(errors)
            log.error("reload --code (%s) refused, every instance keeps its code: %s", label, self.last_error)
            on_done({"applied": False, "error": "reload --code refused, every instance keeps its code:\n"
                                                + "\n".join(errors)})
            return
        self.count += 1
        self.last_error = None
        instances = self.supervisor.instances
        items = [(inst, None) for name in names if (inst := instances.get(name)) is not None
                 and inst.state in ALIVE and not inst.held]
        if items:  # halted (new code died before it was ready): new processes fork the old code again
            self.supervisor.rolling.roll(f"{label} onto new code", items, on_halt=CodeRoll(self, token, label, on_done))
        log.info("reload --code (%s): new code imported; %d running instances roll onto it", label, len(items))
        on_done({"applied": True, "code": True, "token": token, "rolling": len(items), "instances": len(names),
                 "rolled": [[inst.name, inst.pid] for inst, _ in items]})  # pid: the old process


class CodeRoll:
    """A rollout's halt when it rolls new code: back to the old zygotes of `token`."""

    def __init__(self, reloader: CodeReloader, token: int, label: str, on_done: Done) -> None:
        self.reloader, self.token, self.label, self.on_done = reloader, token, label, on_done

    def __call__(self, why: str) -> None:
        self.reloader._revert(self.token, self.label, why, self.on_done)
