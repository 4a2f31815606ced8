"""One exec probe check as non-blocking work on the master's loop: the command is run by the
spawner (spawn/probe_runner.py), never by the master, whose SIGCHLD handler reaps every child;
a timer here ends it at the probe's timeout. Same interface as probe_checks.Check."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable

from ..config.probes import Probe
from ..loop import EventLoop, Timer
from .instance import Instance, describe_exit
from .launch import _setup

if TYPE_CHECKING:
    from ..spawn.spawner import SpawnerClient


class ExecProbes:
    """The exec probes in flight, by token; the supervisor hands the spawner's answers here."""

    def __init__(self, spawner: Callable[[], "SpawnerClient"]) -> None:
        self.spawner = spawner  # the current one: a dead spawner is replaced
        self.waiting: dict[int, ExecCheck] = {}
        self._tokens = itertools.count(1)

    def register(self, run: Any) -> int:
        """A token for one more command in flight (`run.answered(result)` gets its answer):
        hooks (hooks.py) run through the spawner as these probes do."""
        token = next(self._tokens)
        self.waiting[token] = run
        return token

    def answered(self, token: int, result: int | str) -> None:
        """("probed", token, wait status or why it could not run) from the spawner."""
        check = self.waiting.pop(token, None)
        if check is not None:
            check.answered(result)


def exec_verdict(result: int | str, program: str) -> tuple[bool, str]:
    """(passed, detail) for an exec probe's wait status, or the spawner's words (pure)."""
    if isinstance(result, str):
        return False, result
    text, ok = describe_exit(result)
    return ok, "ok" if ok else f"{program}: {text}"


class ExecCheck:
    """One run of one exec probe; `done(passed, detail)` is called once, unless cancelled."""

    def __init__(self, loop: EventLoop, probe: Probe, done: Callable[[bool, str], None], inst: Instance,
                 runs: ExecProbes) -> None:
        self.loop = loop
        self.probe = probe
        self.done = done
        self.inst = inst
        self.runs = runs
        self.token: int | None = None
        self.timer: Timer | None = None

    def start(self) -> None:
        spec, probe = self.inst.spec, self.probe
        self.timer = self.loop.call_later(probe.timeout, self._timed_out)
        self.token = next(self.runs._tokens)
        self.runs.waiting[self.token] = self
        env = spec.full_env()  # as the instance runs: the user's variables, env files, env
        env.update(ORCH_INSTANCE=spec.name, ORCH_PROBE=probe.role)
        try:
            self.runs.spawner().probe(self.token, probe.argv, env, spec.inherit_env, spec.cwd, _setup(spec))
        except Exception as exc:  # noqa: BLE001 - a bad value or a lost spawner fails this check only
            self._finish(False, f"cannot run {probe.argv[0]}: {exc}", kill=False)

    def cancel(self) -> None:
        """End the check without a result (its instance stopped): the command is killed."""
        self._close(kill=True)

    def answered(self, result: int | str) -> None:
        self.token = None  # it has exited: nothing to kill
        self._finish(*exec_verdict(result, self.probe.argv[0]), kill=False)

    def _timed_out(self) -> None:
        self.timer = None
        self._finish(False, f"timed out after {self.probe.timeout:g}s", kill=True)

    def _finish(self, passed: bool, detail: str, kill: bool) -> None:
        if self.done is None:
            return
        done = self.done
        self._close(kill)
        done(passed, detail)

    def _close(self, kill: bool) -> None:
        self.done = None  # type: ignore[assignment]
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.token is not None:
            self.runs.waiting.pop(self.token, None)
            if kill:
                self.runs.spawner().probe_kill(self.token)
            self.token = None
