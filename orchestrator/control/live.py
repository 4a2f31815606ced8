"""Master settings applied on a running master, on save (issue 30): the metrics endpoint and
the control socket rebind, the pidfile moves under its lock, instance logs move to the new
folder at their next open, and the name changes the master's title and status.

A reload (supervise/reloader.py) calls `LiveSettings.apply` through the master for what a
new value alone does not do. The old endpoint, socket or pidfile serves until the new one
is bound, and a failure keeps the old one and says why, naming the key, in the reload's
result; the next save tries again.

What stays where it was until the master restarts: the notify socket beside the first
control socket (its path is in every running instance's NOTIFY_SOCKET), and master.log of
`orch up --detach` (its stdout and stderr). The spawner's guard is started
again on the moved state file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from ..config.load import Settings
from ..errors import ConfigError, OrchError
from ..observe.logs import log_path
from ..spawn.orphans import state_path
from ..spawn.pidfile import PidLock, folder_problem
from ..title import set_title
from .record import write_record
from .server import ControlServer

log = logging.getLogger("orch")


class LiveSettings:
    """Applies the master's own settings to one running master (see the module's doc)."""

    def __init__(self, master: Any) -> None:
        self.master = master  # control, metrics, lock, state_file, supervisor, config, loop

    def apply(self, old: Settings, new: Settings) -> tuple[dict[str, Any], list[str]]:
        """Apply what changed; returns (settings kept at their old value, a note per change)."""
        kept: dict[str, Any] = {}
        notes: list[str] = []
        moved: set[str] = set()
        steps: tuple[tuple[str, Callable[[Any, Any], str | None]], ...] = (
            ("metrics", self._metrics), ("control_socket", self._control_socket),
            ("pidfile", self._pidfile), ("log_dir", self._log_dir), ("name", self._name))
        for key, step in steps:
            before, after = getattr(old, key), getattr(new, key)
            if before == after:
                continue
            try:
                error = step(before, after)
            except OSError as exc:
                error = exc.strerror or str(exc)
            except Exception as exc:  # noqa: BLE001 - a reload never takes the master down
                log.exception("setting orchestrator.%s", key)
                error = f"internal error: {exc!r}"
            if error:
                kept[key] = before
                notes.append(f"orchestrator.{key}: not applied, {error}; still {before}")
                log.error("setting orchestrator.%s: not applied, %s; still %s", key, error, before)
            else:
                moved.add(key)
                notes.append(f"orchestrator.{key}: {before} -> {after}")
        if moved & {"control_socket", "log_dir"}:
            write_record(self.master.config.path, kept.get("control_socket", new.control_socket),
                         kept.get("log_dir", new.log_dir))  # clients find the master there now
        return kept, notes

    def _metrics(self, before: str | None, after: str | None) -> str | None:
        """Bind the new endpoint, then close the old one (same port: close first, and bind
        the old one again if the new one fails)."""
        from ..observe.metrics import MetricsServer
        master = self.master
        old = master.metrics
        if after is None:
            old.close()
            master.metrics = None
            return None
        same_port = old is not None and before is not None and before.rpartition(":")[2] == after.rpartition(":")[2]
        try:
            if same_port:
                old.close()
            master.metrics = MetricsServer(master.loop, after, master._metrics_text)
        except OrchError as exc:
            if same_port:  # the old address again; if even that fails, no endpoint, and the note says so
                try:
                    master.metrics = MetricsServer(master.loop, before, master._metrics_text)
                except OrchError as again:
                    master.metrics = None
                    return f"{str(exc).split(': ', 1)[-1]}; and {again}"
            return str(exc).split(": ", 1)[-1]
        if old is not None and not same_port:
            old.close()
        log.info("metrics on http://%s:%d/metrics", *master.metrics.address[:2])
        return None

    def _control_socket(self, before: Path, after: Path) -> str | None:
        """Listen at the new path, then stop listening at the old one; connections open on
        the old one (the `orch reload` that asked for this) are answered there."""
        why = folder_problem(after.parent)
        if why:
            return f"folder {after.parent} {why}"
        master = self.master
        try:
            new = ControlServer(master.loop, after, master.control.handler)
        except OSError as exc:
            return f"cannot listen on {after}: {exc.strerror or exc}"
        old, master.control = master.control, new
        old.close()
        return None

    def _pidfile(self, before: Path, after: Path) -> str | None:
        """Lock the new pidfile (refused if another master holds it), then release the old
        one; the state file moves beside the new one."""
        why = folder_problem(after.parent)
        if why:
            return f"folder {after.parent} {why}"
        master = self.master
        try:
            lock = PidLock(after).acquire()
        except (OrchError, ConfigError) as exc:
            return str(exc)
        old, master.lock = master.lock, lock
        master.state_file.move(after)
        master.spawner.state_moved(str(state_path(after)))  # its guard reads it if the spawner dies
        old.release()
        return None

    def _log_dir(self, before: Path, after: Path) -> str | None:
        """New instances log there; a running one's log moves at its next write (what it
        wrote stays in the old folder)."""
        why = folder_problem(after)
        if why:
            return f"folder {after} {why}"
        supervisor = self.master.supervisor
        supervisor.log_dir = after
        for inst in supervisor.instances.values():
            inst.logfile.move(log_path(after, inst.name))
        return None

    def _name(self, before: str, after: str) -> str | None:
        set_title(f"orch: master {after} [{self.master.config.path}]")
        self.master.spawner.retitle(f"orch: spawner {after}")
        return None
