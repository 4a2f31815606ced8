"""The master's control commands: one method per command of the control protocol.

Each `cmd_NAME(conn, **args)` answers one request; state-changing commands act through the
supervisor, so a command can never leave an instance in a state the transition table
forbids. A `ControlError` becomes the reply's error and the CLI's exit code.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import Any, Callable, Protocol

from .. import __version__
from ..errors import ConfigError
from ..loop import EventLoop
from ..plan import describe, reconcile
from ..supervise.journal import Journal
from ..supervise.states import ALIVE
from ..supervise.supervisor import Supervisor
from ..units import parse_signal
from .event_feed import EventFeed, record_matcher, unmatched
from .server import Connection, ControlError, Pending, Tail
from .status_rows import status_text
from .waits import Goal, Waits


class _Settings(Protocol):
    name: str


class _Config(Protocol):
    path: Path
    files: tuple[Path, ...]
    include_patterns: tuple[str, ...]


class MasterControl(Protocol):
    """What the commands need of the master (which implements it), and nothing more."""

    settings: _Settings
    config: _Config
    supervisor: Supervisor
    loop: EventLoop
    started: float
    applied_at: float | None
    reload_count: int
    last_reload_error: str | None
    config_bytes: str | None  # digest of the config's sources as last read
    journal: Journal  # the fleet's recent events (orch events)

    @property
    def stopping(self) -> bool: ...

    @property
    def reloading(self) -> str | None: ...

    def request_reload(self, origin: str, force: bool = False,
                       on_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None: ...

    def load_later(self, on_done: Callable[[Any], None]) -> None: ...

    def reload_code(self, names: list[str], label: str, on_done: Callable[[dict[str, Any]], None]) -> None: ...

    def shutdown(self) -> None: ...

    upgrader: Any  # handover/upgrade.py: `orch upgrade`, and the versions status shows

log = logging.getLogger("orch")
DEFAULT_WAIT = 30.0  # seconds a waiting command allows beyond its instances' stop_timeout + min_uptime


class Commands:
    """Handlers for the control socket, bound to one master."""

    def __init__(self, master: MasterControl):
        self.master = master
        self.waits = Waits(master.loop, master.supervisor)

    def __call__(self, cmd: str, args: dict[str, Any], conn: Connection) -> Any:
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            raise ControlError(f"unknown command {cmd!r}", 2)
        return handler(conn=conn, **args)

    def cmd_ping(self, conn: Connection) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, "config": str(self.master.config.path)}

    def cmd_dashboard(self, conn: Connection) -> dict[str, Any]:
        """The dashboard's address with its token (this socket is the owner's only)."""
        dashboard = getattr(self.master, "dashboard", None)
        if dashboard is None:
            raise ControlError('the dashboard is off: set [orchestrator] http = "127.0.0.1:9200" '
                               "(a reload does not start it: restart the master)", 1)
        return {"url": dashboard.url, "token_file": str(dashboard.token_file)}

    def cmd_status(self, conn: Connection, patterns: list[str] | None = None,
                   as_text: bool = False, text_tail: bool = False) -> dict[str, Any] | Tail:
        """The master and its instances. `as_text` sends the rows as the text `orch status
        --json` prints (a JSON array, a row per line): at 5,000 rows, decoding them in the
        client only to encode them again took longer than the master's whole answer.
        `text_tail` sends that text as raw bytes after the reply's line, neither escaped
        here nor unescaped in the client (a third of the encoding and decoding at 5,000)."""
        names = self.match(patterns) if patterns else None
        text = as_text or text_tail
        rows = [] if text else self.master.supervisor.status(names, usage=True)
        reply = {
            "name": self.master.settings.name,
            "config": str(self.master.config.path),
            "pid": os.getpid(),
            "version": __version__,
            "started": self.master.started,
            "applied_at": self.master.applied_at,
            "reloads": self.master.reload_count,
            "last_reload_error": self.master.last_reload_error,
            "reloading": self.master.reloading,  # a reload being expanded, by its origin
            # what the master last read: a client whose digest of these files matches knows
            # how the file on disk loads without parsing it (5,000 templates: most of a second)
            "sources": [str(f) for f in self.master.config.files],
            "include": list(self.master.config.include_patterns),
            "sources_digest": self.master.config_bytes,
            "stopping": self.master.stopping,
            "sockets": self.master.listeners.status(),
            "scaling": scaler.status(names) if (scaler := getattr(self.master, "scaler", None)) else [],
            "versions": self.master.upgrader.status(),  # the master's, and its helpers' (orch upgrade)
            "rollouts": self.master.supervisor.rolling.status(),  # rolling restarts in progress
        }
        if text:  # the autoscaled cells follow the instances, as rows of kind "cell"
            lines = status_text(self.master.supervisor, names, reply["scaling"])
            if text_tail:
                return Tail(reply, lines.encode())
            reply["instances_text"] = lines
        else:
            reply["instances"] = rows
        return reply

    def cmd_scale(self, conn: Connection, target: str | None = None, count: int | None = None,
                  auto: bool = False) -> dict[str, Any]:
        """The autoscaled cells; with a target, pin its cells at `count` or (`auto`) release them."""
        scaler = getattr(self.master, "scaler", None)
        if scaler is None:
            raise ControlError("this master does not autoscale", 2)
        if target is None:
            return {"cells": scaler.status()}
        try:
            return {"cells": scaler.pin(target, None if auto else count)}
        except ValueError as exc:
            raise ControlError(str(exc), 2) from None

    def cmd_inspect(self, conn: Connection, name: str) -> dict[str, Any]:
        """Which processes are the instance's: the client reads each with psutil itself."""
        inst = self.master.supervisor.instances.get(name)
        if inst is None:
            raise ControlError(f"no instance named {name!r} (see orch status)", 2)
        pids = self.master.supervisor.tree_pids(inst.pid) if inst.pid else []
        return {"name": name, "state": inst.state.value, "pid": inst.pid, "pids": pids, "ready": inst.ready,
                "waiting": inst.waiting, "probes": inst.probes.status() if inst.probes is not None else None}

    def cmd_reload(self, conn: Connection, code: bool = False, patterns: list[str] | None = None,
                   wait: bool = False, timeout: float | None = None) -> Any:
        reply = Pending()
        if code:  # new code for preloaded instances (supervise/code_reload.py)
            names = self.match(patterns) if patterns else list(self.master.supervisor.instances)
            waiting: dict[str, Pending] = {}  # the wait for the roll, once there is one
            self.master.reload_code(names, " ".join(patterns or ["every template"]),
                                    lambda r: self._code_reloaded(reply, r, wait, timeout, waiting))
            return reply
        result = self.master.request_reload("orch reload", force=True, on_done=lambda r: _answer(reply, r))
        if result is None:  # expanding in steps: answered when applied
            return reply
        if result.get("error"):
            raise ControlError(result["error"], 2)
        return result

    def _code_reloaded(self, reply: Pending, result: dict[str, Any], wait: bool, timeout: float | None,
                       waiting: dict[str, Pending]) -> None:
        """The new code imported (or did not): answer now, or (`wait`) once every instance
        rolled onto it is ready on a new process; a roll that halts fails the reply (exit 1)."""
        if result.get("halted"):
            waiting.get("roll", reply).fail(result["error"], 1)  # answered already without `wait`: no-op
            return
        rolled = result.get("rolled") or []
        if result.get("error") or not wait or not rolled:
            _answer(reply, result)
            return
        if timeout is None:
            policies = [self.master.supervisor.instances[n].target.policy for n, _ in rolled]
            timeout = DEFAULT_WAIT + len(rolled) * max(p.stop_timeout + p.min_uptime for p in policies)
        inner = self.waits.add([Goal(n, "ready", pid) for n, pid in rolled], result, timeout)
        inner.conn, reply.answered = reply.conn, True  # the wait answers on this request's connection
        waiting["roll"] = inner

    def cmd_diff(self, conn: Connection) -> Any:
        reply = Pending()

        def done(loaded: Any) -> None:
            if isinstance(loaded, ConfigError):
                reply.fail(str(loaded), 2)
                return
            scaler = getattr(self.master, "scaler", None)  # autoscaled cells: their current counts
            specs = scaler.preview(loaded[1]) if scaler is not None else loaded[1]
            plan = reconcile(specs, self.master.supervisor.running_view())
            current = {name: inst.target for name, inst in self.master.supervisor.instances.items()}
            reply.resolve({"lines": describe(plan, current), **plan.counts()})
        self.master.loop.call_soon(lambda: self.master.load_later(done))  # after the reply is owed
        return reply

    def cmd_events(self, conn: Connection, patterns: list[str] | None = None, follow: bool = False,
                   lines: int | None = None) -> dict[str, Any]:
        """The journal's last `lines` records (all kept: up to 1,000) about the instances
        `patterns` name; with `follow`, every new one after this reply (event_feed.py)."""
        journal = self.master.journal
        history = journal.recent()
        missing = unmatched(patterns or [], self.master.supervisor.instances, history)
        if missing is not None:
            raise ControlError(f"no instance matches {missing!r} (now or in the last {len(history)} events)", 1)
        matches = record_matcher(patterns or [])
        chosen = [r for r in history if matches is None or matches(r)]
        if lines is not None:
            chosen = chosen[-lines:] if lines > 0 else []
        if follow:
            conn.owed += 1  # a stream: never idle, closed by the client
            EventFeed(conn, journal, matches, patterns=patterns or [])
        return {"events": chosen, "seq": journal.seq, "follow": follow}

    def cmd_upgrade(self, conn: Connection, check: bool = False) -> Pending:
        """Re-exec the master into the orch installed now (handover/); `check`: only the proof.
        Answered by the new master once it carries on, or with why nothing changed."""
        reply = Pending()
        self.master.loop.call_soon(lambda: self.master.upgrader.request(check, conn, reply))  # once owed
        return reply

    def cmd_down(self, conn: Connection) -> dict[str, Any]:
        conn.keep_open = True  # the client waits for EOF, which comes when this process exits
        if not self.master.stopping:
            log.info("orch down: stopping %d instances", len(self.master.supervisor.alive()))
            self.master.loop.call_soon(self.master.shutdown)
        return {"pid": os.getpid()}

    def match(self, patterns: list[str]) -> list[str]:
        """Instance names for exact names, globs, or `template:NAME`; unknown patterns are errors."""
        names: dict[str, None] = {}
        for pattern in patterns:
            if pattern.startswith("template:"):
                found = [n for n, i in self.master.supervisor.instances.items()
                         if fnmatch.fnmatchcase(i.spec.template, pattern[9:])]
            elif pattern in self.master.supervisor.instances:
                found = [pattern]
            else:
                found = [n for n in self.master.supervisor.instances if fnmatch.fnmatchcase(n, pattern)]
            if not found:
                raise ControlError(f"no instance matches {pattern!r}", 1)
            names.update(dict.fromkeys(found))
        return list(names)

    def cmd_stop(self, conn: Connection, patterns: list[str], wait: bool = False,
                 timeout: float | None = None) -> Any:
        names = self.match(patterns)
        supervisor = self.master.supervisor
        for name in names:
            supervisor.hold(supervisor.instances[name])
        return self._wait(names, [Goal(n, "stopped") for n in names], wait, timeout)

    def cmd_start(self, conn: Connection, patterns: list[str], wait: bool = False,
                  timeout: float | None = None) -> Any:
        names = self.match(patterns)
        supervisor = self.master.supervisor
        for name in names:
            supervisor.release(supervisor.instances[name])
        return self._wait(names, [Goal(n, "ready") for n in names], wait, timeout)

    def cmd_restart(self, conn: Connection, patterns: list[str], rolling: bool = False, wait: bool = False,
                    timeout: float | None = None) -> Any:
        names = self.match(patterns)
        supervisor = self.master.supervisor
        goals = [Goal(n, "ready", supervisor.instances[n].pid) for n in names]
        items = []
        for name in names:
            inst = supervisor.instances[name]
            if rolling and inst.state in ALIVE:
                inst.held = False
                items.append((inst, None))
            else:
                supervisor.restart(inst)
        if items:
            supervisor.roll(f"{len(items)} instances", items)
        return self._wait(names, goals, wait, timeout, batches=len(items) if rolling else 1)

    def _wait(self, names: list[str], goals: list[Goal], wait: bool, timeout: float | None,
              batches: int = 1) -> Any:
        """The names at once, or (`wait`) a reply given when every goal is met."""
        if not wait:
            return names
        if timeout is None:  # long enough for a stop that needs its SIGKILL, and a start
            policies = [self.master.supervisor.instances[n].target.policy for n in names]
            timeout = DEFAULT_WAIT + max(batches, 1) * max(p.stop_timeout + p.min_uptime for p in policies)
        return self.waits.add(goals, names, timeout)

    def cmd_signal(self, conn: Connection, patterns: list[str], signal: str | int) -> dict[str, Any]:
        """Send a signal to the main process of each matching instance that runs one."""
        try:
            signum = parse_signal(signal)
        except ValueError as exc:
            raise ControlError(str(exc), 2) from None
        supervisor = self.master.supervisor
        names = self.match(patterns)
        sent = [n for n in names if supervisor.instances[n].pid is not None]
        if not sent:
            raise ControlError(f"no running instance matches {' '.join(patterns)}", 1)
        for name in sent:
            supervisor.send_signal(supervisor.instances[name], signum, group=False)
        return {"signal": signum.name, "sent": sent, "skipped": [n for n in names if n not in sent]}


def _answer(reply: Pending, result: dict[str, Any]) -> None:
    if result.get("error"):
        reply.fail(result["error"], 2)
    else:
        reply.resolve(result)
