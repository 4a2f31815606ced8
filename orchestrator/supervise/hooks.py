"""`[[hooks]]`: commands run on the journal's events, as non-blocking work on the loop.

A hook runs through the spawner (spawn/probe_runner.py, as exec probes do), never as the
master's child: the master's SIGCHLD handler reaps every child with waitpid(-1), and a
fork of the master would copy its whole fleet's state. Per hook, instance and event kind,
a hook runs at most once per `throttle` (a storm of crashes is one notification, not a
thousand); at most MAX_RUNNING hooks run at once; a timer kills a hook's process group at
its `timeout`. Whatever a hook does, its failure is one line in the master's log.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from ..config.hooks import HookDecl
from ..expand.budget import guarded
from ..expand.renderer import Renderer, template_errors
from ..loop import EventLoop, Timer
from ..observe.logs import log_path
from .instance import describe_exit
from .journal import Journal, Record
from .probe_exec import ExecProbes

log = logging.getLogger("orch")
MAX_RUNNING = 16       # hooks running at once; more are skipped (and said so, once a minute)
LOG_LINES = 20         # the instance's last log lines a hook reads on stdin
STDIN_BYTES = 16 * 1024
THROTTLE_KEYS = 20_000  # throttle entries kept before the expired ones are swept
# Facts every command template may name, empty when the event has none (a hook on several
# kinds can use {{ code }} without failing on the kinds that have no exit code).
_FACTS = ("instance", "template", "pid", "old", "new", "exit", "code", "signal", "reason", "limit",
          "value", "probe", "error", "origin")


def describe(hook: HookDecl) -> str:
    return f"hook {hook.index} ({hook.command[0]})"


class Hooks:
    """Follows the journal and runs the configured hooks of each record's kind."""

    def __init__(self, loop: EventLoop, journal: Journal, declared: Callable[[], tuple[HookDecl, ...]],
                 runs: ExecProbes, log_dir: Callable[[], Path], cwd: Callable[[], Path]) -> None:
        self.loop = loop
        self.declared = declared  # the current config's: a reload changes them
        self.runs = runs
        self.log_dir = log_dir
        self.cwd = cwd
        self.renderer = Renderer()
        self.last: dict[tuple[HookDecl, str | None, str], float] = {}  # when each last ran
        self.running: set[HookRun] = set()
        self.ran = 0
        self.skipped = 0
        self._skip_said = -1e9
        self.stop = journal.follow(self.on_record)

    def on_record(self, rec: Record) -> None:
        hooks = self.declared()
        if not hooks:
            return
        for hook in hooks:
            if rec["kind"] in hook.on and self._due(hook, rec):
                self._run(hook, rec)

    def _due(self, hook: HookDecl, rec: Record) -> bool:
        """True (and the throttle window begins) unless the hook ran for this instance and
        kind within its throttle."""
        now = self.loop.time()
        key = (hook, rec.get("instance"), rec["kind"])
        last = self.last.get(key)
        if last is not None and now - last < hook.throttle:
            return False
        if len(self.running) >= MAX_RUNNING:
            self.skipped += 1
            if now - self._skip_said >= 60.0:
                self._skip_said = now
                log.warning("%s skipped for %s %s: %d hooks are running already", describe(hook),
                            rec.get("instance") or "the fleet", rec["kind"], MAX_RUNNING)
            return False
        if len(self.last) >= THROTTLE_KEYS:
            self.last = {k: t for k, t in self.last.items() if now - t < k[0].throttle}
        self.last[key] = now
        return True

    def _run(self, hook: HookDecl, rec: Record) -> None:
        context = {name: "" for name in _FACTS}
        context.update({k: ("" if v is None else v) for k, v in rec.items()}, event=rec["kind"])
        try:
            with guarded():
                argv = tuple(self.renderer.text(item, context) for item in hook.command)
        except template_errors() as exc:
            log.warning("%s for %s %s: cannot render its command: %s", describe(hook),
                        rec.get("instance") or "the fleet", rec["kind"], str(exc).splitlines()[0])
            return
        self.ran += 1
        HookRun(self, hook, rec, argv).start(hook_env(rec), self._stdin(rec))

    def _stdin(self, rec: Record) -> bytes:
        """The instance's last LOG_LINES lines (a bounded read of its log's end)."""
        name = rec.get("instance")
        if not name:
            return b""
        return tail_lines(log_path(self.log_dir(), name), LOG_LINES, STDIN_BYTES)


def hook_env(rec: Record) -> dict[str, str]:
    """What a hook finds in its environment about the event (pure)."""
    reason = rec.get("reason") or rec.get("error") or rec.get("limit") or ""
    env = {"ORCH_EVENT": rec["kind"], "ORCH_INSTANCE": rec.get("instance") or "",
           "ORCH_TEMPLATE": rec.get("template") or "", "ORCH_EXIT": rec.get("exit") or "",
           "ORCH_REASON": str(reason), "ORCH_EVENT_JSON": json.dumps(rec, default=str)}
    for key, name in (("code", "ORCH_EXIT_CODE"), ("signal", "ORCH_SIGNAL"), ("pid", "ORCH_PID")):
        if rec.get(key) is not None:
            env[name] = str(rec[key])
    return env


def tail_lines(path: Path, count: int, limit: int) -> bytes:
    """The last `count` complete lines of a file, at most `limit` bytes; b"" without the file."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - limit))
            data = handle.read(limit)
    except OSError:
        return b""
    if size > limit and b"\n" in data:
        data = data[data.index(b"\n") + 1:]  # the first line was cut
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:]) if count > 0 else b""


class HookRun:
    """One run of one hook: started through the spawner, ended by its exit or its timeout."""

    def __init__(self, hooks: Hooks, hook: HookDecl, rec: Record, argv: tuple[str, ...]) -> None:
        self.hooks = hooks
        self.hook = hook
        self.about = f"{describe(hook)} for {rec.get('instance') or 'the fleet'} {rec['kind']}"
        self.argv = argv
        self.token: int | None = None
        self.timer: Timer | None = None

    def start(self, env: dict[str, str], stdin: bytes) -> None:
        hooks = self.hooks
        self.token = hooks.runs.register(self)
        hooks.running.add(self)
        self.timer = hooks.loop.call_later(self.hook.timeout, self._timed_out)
        try:
            hooks.runs.spawner().probe(self.token, self.argv, env, True, str(hooks.cwd()), None,
                                       stdin=stdin, output=True)
        except Exception as exc:  # noqa: BLE001 - a lost spawner or a bad value fails this run only
            self._end(f"cannot run: {exc}", kill=False)

    def answered(self, result: int | str) -> None:
        """The spawner's answer: a wait status, or why the command could not start."""
        self.token = None
        if isinstance(result, str):
            self._end(result, kill=False)
            return
        text, ok = describe_exit(result)
        self._end(None if ok else f"failed ({text})", kill=False)

    def _timed_out(self) -> None:
        self.timer = None
        self._end(f"timed out after {self.hook.timeout:g}s: killed", kill=True)

    def _end(self, problem: str | None, kill: bool) -> None:
        hooks = self.hooks
        if self not in hooks.running:
            return
        hooks.running.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.token is not None:
            hooks.runs.waiting.pop(self.token, None)
            if kill:
                hooks.runs.spawner().probe_kill(self.token)
            self.token = None
        if problem is not None:
            log.warning("%s %s", self.about, problem)
