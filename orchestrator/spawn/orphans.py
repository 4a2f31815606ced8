"""Nothing left behind after a crash: the state file of the run, and the start-up sweep that
ends what a SIGKILLed (or OOM-killed) master and spawner left alive.

Normally the spawner ends every tree when the master dies. Only when both die at once
(kill -9 of the whole group, the OOM killer) can a worker's descendants outlive them. The
next `orch up`, holding the pidfile lock, reads the state file and SIGKILLs every process
that carries the old run's environment cookie (ORCH_RUN, inherited by every descendant that
did not clear its environment: escaped sessions and double-forked daemons included), or
whose session or process group is a recorded main process. Start times guard against
recycled pids: nothing that started before the old master is touched, a recorded leader
alive with another start time is someone else's, and the kill goes through a pidfd opened
before the start time is checked again. A state file is believed only if this user wrote it:
a plain file it owns that nobody else can write (otherwise anyone who could write it would
choose what root's `orch up` kills); it is written without following links.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

if TYPE_CHECKING:
    import psutil

from ..procfs import CLOCK_TICKS, start_time
from .state_rows import StateRows, record_text

log = logging.getLogger("orch")


class Fleet(Protocol):
    """What the state file needs of the supervisor (spawn/ is below supervise/)."""

    by_pid: dict[int, Any]  # main pid -> instance (with .pid and .start_ticks)
    instances: dict[str, Any]  # name -> instance (with .held: stopped by `orch stop`)
    events: Any  # the EventBus: subscribe(callback)


def state_path(pidfile: Path) -> Path:
    return pidfile.with_name(pidfile.name + ".state")


def write_state(pidfile: Path, spawner: int | None, groups: str | Iterable[tuple[int, int | None]],
                run: str | None = None, stopped: Iterable[str] = ()) -> None:
    """Record the run's cookie, (leader pid, start time) of every running group (pairs, or
    StateRows' text) and the names of the instances `orch stop` holds stopped, atomically.
    Without a spawner (a clean exit) only the stopped names are kept: nothing is left to sweep."""
    record: dict[str, Any] = {"master": os.getpid(), "stopped": sorted(stopped)}
    if spawner is None:
        text = json.dumps(record)
    else:
        record.update({"spawner": [spawner, start_time(spawner)], "run": run, "run_start": start_time(os.getpid())})
        text = record_text(record, groups)
    path = state_path(pidfile)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover (or a planted link): O_EXCL then never follows one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # rename(2) replaces a link at `path`, never its target


class StateRecorder:
    """Keeps the state file in step with the running groups and the instances `orch stop`
    holds (they stay stopped across a restart of the master: `read_stopped`): a subscriber of the
    supervisor's events, writing at most once per burst, never on the spawn path. A write
    formats only the rows that changed (StateRows: a /proc read for each new process) and
    rewrites the file from their cached text; the wait after a burst still grows with what
    the last write cost: at most 5 % of a core, however large the fleet."""

    DELAY = 0.05
    SHARE = 0.05  # of a core, at most

    def __init__(self, loop: Any, supervisor: "Fleet", pidfile: Path, spawner: Callable[[], Any]):
        self.loop = loop
        self.supervisor = supervisor
        self.pidfile = pidfile
        self.spawner = spawner  # the current SpawnerClient: its pid and the run's cookie
        self._timer: Any = None
        self._cost = 0.0  # seconds the last write took
        self.rows = StateRows()
        supervisor.events.subscribe(self.on_event)

    def on_event(self, event: Any) -> None:
        # A hold or a release (`orch stop`, `orch start`) passes through STOPPED or STARTING.
        started = getattr(event, "started", False)
        if started:
            self.rows.touch(event.instance.pid)  # a new process, maybe under a pid seen before
        if started or getattr(event, "ended", False) \
                or getattr(getattr(event, "new", None), "value", None) in ("stopped", "starting"):
            self.changed()

    def changed(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(max(self.DELAY, self._cost / self.SHARE), self.write)

    def write(self) -> None:
        self._timer = None
        began = time.monotonic()
        self.rows.sync(self.supervisor.by_pid)
        try:
            spawner = self.spawner()
            write_state(self.pidfile, spawner.pid, self.rows.text(), run=spawner.run, stopped=self.stopped())
        except OSError as exc:
            log.warning("cannot write the state file: %s", exc)
        self._cost = time.monotonic() - began

    def stopped(self) -> list[str]:
        """The instances `orch stop` holds: they stay stopped across a master restart."""
        return [name for name, inst in self.supervisor.instances.items() if inst.held]

    def say_held(self) -> None:
        """At start-up: log the instances a previous master's `orch stop` left stopped; record them."""
        names = sorted(self.stopped())
        if names:
            log.info("%d instances stay stopped, as `orch stop` left them (`orch start` them; `orch up "
                     "--fresh` forgets): %s", len(names), ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
        self.changed()

    def move(self, pidfile: Path) -> None:
        """Write beside a new pidfile from now on (orchestrator.pidfile changed); the old file goes."""
        old, self.pidfile = self.pidfile, pidfile
        self.write()
        state_path(old).unlink(missing_ok=True)

    def close(self, clean: bool) -> None:
        """Stop writing. A clean exit leaves nothing to sweep: the file keeps only the
        stopped instances, for the next `orch up`, or goes when there are none."""
        if self._timer is not None:
            self._timer.cancel()
        if not clean:
            return
        stopped = self.stopped()
        try:
            if stopped:
                write_state(self.pidfile, None, (), stopped=stopped)
            else:
                state_path(self.pidfile).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot write the state file: %s", exc)


def read_stopped(pidfile: Path) -> set[str]:
    """The instances the last master's state file says `orch stop` held (see StateRecorder)."""
    record = read_state(state_path(pidfile))
    names = record.get("stopped") if record else None
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def ticks(proc: "psutil.Process") -> int | None:
    """A process's start time in clock ticks since boot, the unit the state file, the spawner
    and the guard record (psutil gives seconds: boot time + ticks / CLK_TCK); None if gone."""
    import psutil
    try:
        return round((proc.create_time() - psutil.boot_time()) * CLOCK_TICKS)
    except psutil.Error:
        return None


def _recorded_leaders(record: dict) -> dict[int, int]:
    leaders: dict[int, int] = {}
    for leader, started in record.get("groups", []):
        if started is None:
            continue
        now = _ticks_of(leader)
        if now is not None and now != started:
            continue  # the pid was recycled: that group is someone else's
        leaders[leader] = started
    return leaders


def _ticks_of(pid: int) -> int | None:
    import psutil
    try:
        return ticks(psutil.Process(pid))
    except psutil.Error:
        return None


def leftovers(record: dict, until: int | None = None) -> list[tuple["psutil.Process", int, str]]:
    """(process, start time, why) of every live process of the recorded run that started no
    later than `until` (clock ticks since boot), if given. Rare (once per `orch up`, or when
    a spawner died), so psutil's per-process reads cost nothing that matters here; imported
    here, not at start, where most runs have nothing to sweep."""
    import psutil
    found: list[tuple[psutil.Process, int, str]] = []
    spawner, spawner_start = record.get("spawner") or (None, None)
    if spawner and spawner_start is not None and _ticks_of(spawner) == spawner_start:
        found.append((psutil.Process(spawner), spawner_start, "the old spawner"))
    leaders = _recorded_leaders(record)
    run, since = record.get("run"), record.get("run_start") or 0
    if not leaders and not run:
        return found
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid in (me, spawner):
            continue
        try:
            started = ticks(proc)
            if started is None or (until is not None and started > until):
                continue
            why = _belongs(proc, started, leaders, run, since)
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
        if why:
            found.append((proc, started, why))
    return found


def _belongs(proc: "psutil.Process", started: int, leaders: dict[int, int], run: str | None,
             since: int) -> str | None:
    for owner, what in ((os.getpgid(proc.pid), "process group"), (os.getsid(proc.pid), "session")):
        if owner in leaders and started >= leaders[owner]:
            return f"{what} {owner}"
    if run and started >= since:
        import psutil
        try:
            env = proc.environ()
        except psutil.AccessDenied:  # another user's process: never ours
            return None
        if env.get("ORCH_RUN") == run:
            return f"ORCH_RUN={run}"
    return None


def kill_checked(proc: "psutil.Process") -> bool:
    """SIGKILL `proc` only if it is still the process psutil found (same pid and start time):
    the pidfd is opened first, so the identity checked is the one signalled."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return False
    try:
        if not proc.is_running():
            return False  # gone, and the pid reused since the scan
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def end_leftovers(pidfile: Path, timeout: float = 5.0, keep: Iterable[str] = ()) -> int:
    """SIGKILL what a previous master left alive; returns how many. Call with the pidfile locked.
    The names in `keep` (held by `orch stop`) stay in the file until the new master writes its
    own, so a master killed before its first write still leaves them for the next `orch up`."""
    path = state_path(pidfile)
    record = read_state(path)
    if record is None:
        return 0
    count = end_record(record, f"by the previous master {record.get('master')}", timeout)
    if keep:
        write_state(pidfile, None, (), stopped=keep)
    else:
        path.unlink(missing_ok=True)
    return count


def read_state(path: Path) -> dict | None:
    """The record in the state file at `path`, or None: none there, unreadable, or not to be
    trusted (then a warning says why, and nothing it names is signalled)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        log.warning("ignoring the state file %s: %s; nothing it names is signalled", path, why)
        return None
    with os.fdopen(fd, "rb") as f:
        why = _untrusted(os.fstat(fd))
        if why:
            log.warning("ignoring the state file %s: %s; nothing it names is signalled", path, why)
            return None
        try:
            record = json.loads(f.read())
        except (OSError, ValueError):
            return None
    return record if isinstance(record, dict) else None


def _untrusted(info: os.stat_result) -> str | None:
    """Why a state file with this stat cannot have been written by this user alone, or None."""
    me = os.geteuid()
    if not stat.S_ISREG(info.st_mode):
        return "it is not a plain file"
    if info.st_uid != me:
        return f"it is owned by uid {info.st_uid}, not by this master's user (uid {me})"
    if info.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def end_record(record: dict, by: str, timeout: float, until: int | None = None) -> int:
    """SIGKILL every live process of a recorded run (started by `until`, if given), wait up
    to `timeout` for them to go."""
    victims = []
    for proc, _, why in leftovers(record, until):
        log.warning("ending pid %d left behind %s (%s)", proc.pid, by, why)
        if kill_checked(proc):
            victims.append(proc)
    for proc in _wait_ended(victims, timeout):
        log.warning("pid %d did not end within %.1fs of SIGKILL", proc.pid, timeout)
    return len(victims)


def kill_groups(groups: Iterable[tuple[int, int | None]]) -> int:
    """SIGKILL the process group of each (leader pid, its start ticks) whose leader is still
    that process: what a master does itself when its spawner dies, so no replacement starts
    beside a process still running. The dead spawner's guard sweeps the rest by the run's
    cookie (a descendant in another group, an escaped daemon): the master never looks over
    every process (end_record's scan, with one /proc/PID/environ read per process, held the
    master's loop for seconds on a loaded host with thousands of processes)."""
    count = 0
    for pid, ticks_then in groups:
        if ticks_then is None or start_time(pid) != ticks_then:
            continue  # ended, and perhaps its pid reused: never signal another's group
        try:
            os.killpg(pid, signal.SIGKILL)  # an instance leads its own session and group
            count += 1
        except OSError:
            pass
    return count


def _wait_ended(procs: list[Any], timeout: float) -> list[Any]:
    """Wait up to `timeout` for `procs` to end; those still running. A zombie has ended: its
    parent (not us, not reaping) keeps the pid, and psutil.wait_procs counted it as running,
    so a master sweeping a run whose processes were children of a live non-reaping parent
    waited the whole 5 s before it answered anyone."""
    import psutil
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        running = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    running.append(proc)
            except psutil.Error:  # gone between the two questions
                pass
        if not running or time.monotonic() >= deadline:
            return running
        procs = running
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.1)
