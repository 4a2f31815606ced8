"""The proof that the new code can take over, run before the master changes anything.

The master starts `python -m orchestrator <its own arguments>` exactly as its exec would
(same interpreter, environment, working folder), with ORCH_HANDOVER=check and the record on
stdin. That child compiles every module of the orch it finds, imports every module of the
master's side, loads and expands the config and reads the record; it prints one JSON line.
A tree that does not even start (a syntax error in `cli/`) fails before our code runs, and
the end of its output is the error.

The child is the master's own (posix_spawn: the master has threads), so the master's
SIGCHLD reaping hands its exit here (`Master._reap` -> `Proof.reaped`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Callable

from .carry import ENV, record_fd, successor_argv

TIMEOUT = 120.0  # seconds the proof may take (it expands the whole config, like a reload)
# Compiled, not imported: children import these, not the master, and the CLI's commands run
# in their own processes (the part of cli/ an upgraded master runs is what starts this child).
COMPILED_ONLY = ("orchestrator.worker", "orchestrator.queues", "orchestrator.tasks", "orchestrator.demo",
                 "orchestrator.cli.")
Done = Callable[[str | None, dict[str, Any]], None]  # (error or None, what the child said)


class Proof:
    """One proof child; `done(error, answer)` is called once, in the loop."""

    def __init__(self, loop: Any, record: dict[str, Any], done: Done):
        self.loop = loop
        self.done = done
        self.pid: int | None = None
        self._out = os.memfd_create("orch-proof")
        state = record_fd(record)
        try:
            env = {**os.environ, ENV: "check"}
            actions = [(os.POSIX_SPAWN_DUP2, state, 0), (os.POSIX_SPAWN_DUP2, self._out, 1),
                       (os.POSIX_SPAWN_DUP2, self._out, 2)]
            self.pid = os.posix_spawn(sys.executable, successor_argv(), env, file_actions=actions)
        except OSError as exc:
            os.close(self._out)
            self._out = -1
            why = f"cannot start {sys.executable}: {exc.strerror or exc}"
            loop.call_soon(lambda: self.done(why, {}))
        finally:
            os.close(state)
        self._timer = loop.call_later(TIMEOUT, self._overdue) if self.pid else None

    def reaped(self, pid: int, status: int) -> bool:
        """The master reaped `pid`: True if it was this proof (then `done` has been called)."""
        if pid != self.pid:
            return False
        self.pid = None
        if self._timer is not None:
            self._timer.cancel()
        output = self._output()
        answer = _answer(output)
        if answer.get("ok") and os.waitstatus_to_exitcode(status) == 0:
            self.done(None, answer)
        elif "error" in answer:
            self.done(answer["error"], answer)
        else:
            self.done(_last_lines(output) or f"the new code exited with {os.waitstatus_to_exitcode(status)}", {})
        return True

    def cancel(self) -> None:
        """End the child (the master is going away)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def _overdue(self) -> None:
        self._timer = None
        self.cancel()  # reaped as usual; its output says how far it got

    def _output(self) -> str:
        if self._out < 0:
            return ""
        try:
            os.lseek(self._out, 0, os.SEEK_SET)
            return os.read(self._out, 1 << 20).decode(errors="replace")
        finally:
            os.close(self._out)
            self._out = -1


def _answer(output: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                continue
            if isinstance(found, dict):
                return found
    return {}


def _last_lines(output: str, count: int = 6) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


# --- the child's side ------------------------------------------------------------------------
def check() -> int:  # pragma: no cover - runs in the proof child
    """In the proof child: read the record on stdin, compile and import orch, load and expand
    the config; one JSON line on stdout says whether all of it worked."""
    from .. import __version__
    from .state import HandoverError, check_protocol, migrate, missing_names
    try:
        record = migrate(json.loads(sys.stdin.buffer.read()))
        check_protocol(record)
        _import_everything()
        from pathlib import Path
        from ..config.load import load_config
        from ..expand.render import expand
        from ..config.source import overlay
        from .resume import applied_sources
        with overlay(applied_sources(record)):  # as the successor loads it: the config applied
            specs = expand(load_config(Path(record["config"])))
        missing = missing_names(record, (spec.name for spec in specs))
        if missing:
            raise HandoverError(f"the config, expanded by the new code, has no instance {', '.join(missing[:5])}")
        from .specs import SpecReader
        kept = SpecReader(record.get("specs") or [])
        for row in record["instances"]:  # the specs kept of instances a rollout has not restarted yet
            if row.get("spec"):
                kept.read(row["spec"]["runs"])
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is the answer
        print(json.dumps({"ok": False, "error": _why(exc)}))
        return 1
    print(json.dumps({"ok": True, "version": __version__, "instances": len(specs),
                      "path": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}))
    return 0


def _import_everything() -> None:  # pragma: no cover - runs in the proof child
    """Compile every module of the package; import those the master runs."""
    import importlib
    import importlib.util
    import pkgutil
    import orchestrator
    for module in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
        if module.name.startswith(COMPILED_ONLY) or module.name.endswith("__main__"):
            spec = importlib.util.find_spec(module.name)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "get_code"):
                spec.loader.get_code(module.name)  # compiled (or its up-to-date .pyc read), not run
        else:
            importlib.import_module(module.name)


def _why(exc: BaseException) -> str:
    from ..errors import OrchError
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}:{exc.lineno}: SyntaxError: {exc.msg}"
    if isinstance(exc, OrchError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
