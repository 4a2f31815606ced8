"""The successor's side: the old master's record and fds turned back into a running master
(cli/resume.py builds the Master; `Handover.restore` runs inside its `run`).

An instance comes back in the state it was in, with its pid, counters and timers. One that
was running is announced with a `StateChanged` to running ("handed over"), so limits,
probes, the state file and the systemd status arm for it as for a start; the deadlines the
old master had armed go on where they were. Nothing is sent to any process.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config.load import Config
from ..config.source import digest_of
from ..expand.spec import ProcessSpec
from ..observe.logs import LogFile, log_path
from ..plan import Plan, reconcile
from ..spawn.listeners import Listeners
from ..supervise.events import HandedOver
from ..supervise.states import State, Then
from .carry import Taken, release_signals
from .specs import SpecReader
from .state import KEPT, removing

if TYPE_CHECKING:
    from socket import socket as Socket

    from ..supervise.rollout import Rollout

log = logging.getLogger("orch")


def listeners_from(record: dict[str, Any], taken: Taken, config: Config) -> Listeners:
    """The old master's listening sockets, under their keys, with the config's declarations."""
    fds = record["fds"]
    listeners = Listeners({name: taken.sock(fd) for name, fd in fds["adopted"].items()})
    listeners.held = {key: taken.sock(fd) for key, fd in fds["sockets"].items()}  # type: ignore[misc]
    listeners._unix_files = {key: (Path(path), inode) for key, (path, inode) in fds["unix_files"].items()}
    listeners.update(config.sockets)  # binds nothing already held; retires what the config dropped
    return listeners


class Handover:
    """What `Master.run(handover)` takes over."""

    def __init__(self, record: dict[str, Any], taken: Taken):
        self.record = record
        self.taken = taken

    def socket(self, name: str) -> Socket | None:
        """The control, notify or metrics socket the old master listened on."""
        return self.taken.named(name)

    def restore(self, master: Any) -> Plan:
        """Bring back the instances, their pipes, the master's counters; answer the upgrade's
        client. Returns the plan for anything the config has that the record had not."""
        record, sup = self.record, master.supervisor
        specs = {spec.name: spec for spec in master._initial_specs}
        kept = SpecReader(record.get("specs") or [])  # the specs instances run that the config has not
        self._cgroups(master.kernel_memory)
        master.journal.take_over(record["master"].get("journal") or {})
        for row in record["instances"]:
            if row["name"] in specs:
                restore_instance(master, specs[row["name"]], row, kept)
            elif removing(row):
                finish_removal(master, row)
            else:  # the proof expanded it; an expansion that differs now cannot supervise it
                log.error("%s is not in the config as the new code expands it: its process %s is stopped",
                          row["name"], row["pid"])
                if row["pid"] is not None:
                    master.supervisor.launcher.signal(row["pid"], signal.SIGTERM, True)
        self._counters(master)  # first: a rollout that ends at once runs the queued reload
        sup.pending_ops = sum(inst.tracked for inst in sup.instances.values())  # a reload's stops
        for row in self.record.get("rollouts", []):
            rollout = rollout_from(row, sup.instances, specs)
            if row.get("code"):  # new code rolling: a halt sends new processes back to the old zygotes
                halted = code_roll_halted(master, row["code"][0])
                sup.rolling.on_halt[rollout] = master.code.take_over(row["code"], halted)
            sup.rolling.adopt(rollout)
        if not sup.pending_ops:
            master.reloader.idle()  # a reload queued behind what has ended meanwhile goes now
        self._pipes(sup, master.settings.log_dir)
        release_signals()  # handlers are in place: what arrived during the exec is handled now
        for fd in record["fds"].get("clients", []):
            master.control.adopt(self.taken.sock(fd))
        for client in record["fds"].get("partial", []):
            conn = master.control.adopt(self.taken.sock(client["fd"]))
            if conn is not None:
                conn.carry_on(client["unsent"].encode("latin-1"), client["unread"].encode("latin-1"))
        for feed in record["fds"].get("feeds", []):
            self._feed(master, feed)
        for client in record["fds"].get("waiting", []):
            conn = master.control.adopt(self.taken.sock(client["fd"]))
            for saved in client["waits"] if conn is not None else ():
                master.control.handler.waits.take_over(conn, saved)
        self._asked_again(master)
        for page in record["fds"].get("pages", []):  # dashboard clients: pages' streams, requests
            sock = self.taken.sock(page["fd"])
            if master.dashboard is not None:
                master.dashboard.take_over(sock, page)
            elif sock is not None:
                sock.close()
        self._answer(master)
        log.info("orch %s master %d: took over %d instances from orch %s (upgrade %d)", __version__,
                 os.getpid(), len(record["instances"]), record["orch"], master.upgrader.count)
        return reconcile(self._desired(master), running_view(sup))

    def _desired(self, master: Any) -> list[ProcessSpec]:
        """What the master runs: autoscaled cells keep their counts (and pins) as they were."""
        from ..supervise.autoscale import CellState
        scaler, kept = master.scaler, self.record["master"].get("scaler") or {}
        scaler.pins = {name: int(count) for name, count in kept.get("pins", {}).items()}
        scaler.desired(master._initial_specs)
        for name, (count, up, down) in kept.get("cells", {}).items():
            if name in scaler.cells:
                scaler.cells[name].state = CellState(count, up, down)
        return scaler.desired(master._initial_specs)  # each cell keeps the state just set

    def _pipes(self, sup: Any, log_dir: Path) -> None:
        for pipe in self.record["pipes"]:
            fd, inst = self.taken.plain(pipe["fd"]), sup.instances.get(pipe["name"])
            if inst is not None:
                sup.launcher.pump.add(fd, inst.write_stderr if pipe["stderr"] else inst.write_output)
            else:  # a removed instance's process still talking: its log, as before
                logfile = LogFile(log_path(log_dir, pipe["name"]), 0, 0)
                sup.launcher.pump.add(fd, logfile.errors().write if pipe["stderr"] else logfile.write)

    def _cgroups(self, kernel: Any) -> None:
        """The old master's cgroups, as if each running instance's start were in flight: its
        "handed over" start then watches them as a start does (kernel_memory.py)."""
        kept = self.record["master"].get("cgroups")
        if kernel is None or not kept:
            return
        from ..spawn.cgroups import Layout
        kernel.run, kernel.made = Layout(*kept["run"]), kept["made"]
        kernel.pending.update({name: tuple(dirs) for name, dirs in kept["watches"].items()})

    def _counters(self, master: Any) -> None:
        old, spawner = self.record["master"], self.record["spawner"]
        master.started, master.applied_at = old["started"], old["applied_at"]
        master.reloader.count, master.reloader.failures = old["reloads"], old["reload_failures"]
        master.reloader.last_seconds = old["last_reload_seconds"]
        count, error, *token = old.get("code_reloads") or (0, None)
        master.code.count, master.code.last_error = count, error
        if token:  # the running spawner knows the old master's tokens: never reuse one
            master.code._tokens = itertools.count(token[0])
        master.reloader.queued = old.get("queued_reload")  # goes once the rollouts carried on are done
        applied = applied_sources(self.record)
        if applied is not None:  # the config the fleet runs, which a save may have changed since
            master.reloader.applied_sources, master.reloader.config_bytes = applied, digest_of(applied)
        master.upgrader.count = old.get("upgrades", 0)
        master.upgrader.previous = self.record["orch"]
        master.upgrader.spawner_version = spawner.get("version")
        master.upgrader.spawner_protocol = spawner.get("protocol") or master.upgrader.spawner_protocol
        if old.get("fd_limit"):
            master._fd_limit = tuple(old["fd_limit"])  # what a replacement spawner gives children
        master.spawner.adopted = {leader: set(orphans) for leader, orphans in spawner.get("adopted", [])}

    def _asked_again(self, master: Any) -> None:
        """`orch diff` and `orch reload` the old master owed answers to: asked again here,
        once the fleet is taken over (the reload against the file on disk)."""
        for client in self.record["fds"].get("asked", []):
            conn = master.control.adopt(self.taken.sock(client["fd"]))
            if conn is not None:
                requests = [(cmd, args) for cmd, args in client["requests"]]
                master.loop.call_soon(lambda conn=conn, requests=requests: conn.ask_again(requests))

    def _feed(self, master: Any, saved: dict[str, Any]) -> None:
        """An `orch events -f` stream of the old master goes on here."""
        from ..control.event_feed import EventFeed
        conn = master.control.adopt(self.taken.sock(saved["fd"]))
        if conn is not None:
            EventFeed.take_over(conn, master.journal, saved)

    def _answer(self, master: Any) -> None:
        fd = self.record.get("reply")
        if fd is None:
            return
        conn = master.control.adopt(self.taken.sock(fd))
        if conn is not None:
            conn.send({"ok": True, "result": {"from": self.record["orch"], "to": __version__,
                                              "pid": os.getpid(),
                                              "instances": len(self.record["instances"]),
                                              "spawner": master.upgrader.spawner_version}})


def applied_sources(record: dict[str, Any]) -> dict[str, bytes] | None:
    """The config files' bytes as the old master had applied them (None: read the disk)."""
    kept = record["master"].get("applied_sources")
    return {name: text.encode("latin-1") for name, text in kept.items()} if kept else None


def restore_instance(master: Any, spec: ProcessSpec, row: dict[str, Any], kept: SpecReader) -> None:
    """One instance back as the record has it: with the spec it runs, kept in the record when
    the config (`spec`) no longer has it, until it restarts onto the config's."""
    sup, loop = master.supervisor, master.loop
    old = row.get("spec")
    inst = sup._new_instance(kept.read(old["runs"]) if old else spec)
    if old and old["next"]:  # stopping to restart onto the config's (a rollout's are in its items)
        inst.next_spec = spec
    for key in KEPT:
        setattr(inst, key, row[key])
    inst.then, inst.stop_reason = Then(row["then"]), row["stop_reason"]
    sup.instances[inst.name] = inst
    state = State(row["state"])
    if state is State.WAITING:
        sup.start(inst)  # waits again until what it is `after` is ready
        return
    inst.state = state  # as it was: no move happened, so no transition is checked or announced
    if inst.pid is not None:
        sup.by_pid[inst.pid] = inst
        sup.trees.track(inst.pid)
    due = row["timer"]
    left = max(0.0, due - loop.time()) if due is not None else None
    if state is State.RUNNING:
        sup.events.emit(HandedOver(inst, State.STARTING, State.RUNNING, "handed over"))
        master.probes.take_over(inst, row.get("probes"))  # begun afresh by that event: counts go on
        if not inst.ready:
            ready_later(sup, inst)
        for key, when in row["deadlines"].items():
            master.limits.rearm(inst, key, max(0.0, when - loop.time()))
    elif state is State.STOPPING and left is not None and inst.pid is not None:
        pid = inst.pid
        inst.timer = loop.call_later(left, lambda: sup._kill(inst, pid))  # the stop's SIGKILL deadline
    elif state in (State.BACKOFF, State.CRASHLOOP) and left is not None:
        inst.timer = loop.call_later(left, lambda: sup._backoff_over(inst))


def ready_later(sup: Any, inst: Any) -> None:
    """A running instance not ready yet is ready once up for `min_uptime` (as after its
    start; probes that gate readiness still decide): its start time carried over."""
    pid, loop = inst.pid, sup.loop
    left = max(0.0, (inst.started_at or loop.time()) + inst.spec.policy.min_uptime - loop.time())

    def check() -> None:
        if inst.pid == pid and inst.state is State.RUNNING:
            sup.mark_ready(inst)
    loop.call_later(left, check)


def running_view(sup: Any) -> dict[str, Any]:
    """What each instance runs or will run, for the plan after a handover: one a rollout will
    restart onto the config's spec counts as on it (the rollout restarts it, the plan not)."""
    view = sup.running_view()
    for rollout in sup.rolling.rollouts:
        view.update({inst.name: spec for inst, spec in rollout.waiting if spec is not None})
    return view


def rollout_from(row: dict[str, Any], instances: dict[str, Any],
                 specs: dict[str, ProcessSpec] | None = None) -> Rollout[Any]:
    """A rolling restart as the record has it (onto `specs`, the config's); the instances of
    its batch in flight are restarting (stopping, or running but not ready yet) and finish as
    they would have."""
    from ..supervise.rollout import Rollout  # here: the proof locates an error in it (proof.py)
    rollout: Rollout[Any] = Rollout(row["label"], row["batch"], [])
    rollout.total = row["total"]
    for name, onto_new in row["waiting"]:
        inst = instances.get(name)
        if inst is not None:  # onto the spec the config has: the one this master expanded
            rollout.waiting.append((inst, (specs or {}).get(name, inst.spec) if onto_new else None))
    for name in row["in_flight"]:
        inst = instances.get(name)
        if inst is not None:
            rollout.in_flight.add(inst)
            inst.rollout = rollout
    return rollout


def code_roll_halted(master: Any, token: int) -> Any:
    """What a carried code reload's halt tells its client: the `orch reload --code` waiting
    for the roll (its wait carried with the result naming `token`) fails with the reason."""
    def done(result: dict[str, Any]) -> None:
        waits = getattr(getattr(master.control, "handler", None), "waits", None)
        for wait in list(waits.active) if waits is not None else ():
            if isinstance(wait.result, dict) and wait.result.get("token") == token:
                waits._end(wait, result["error"])  # as the old master's halt failed it (control/commands.py)
    return done


def finish_removal(master: Any, row: dict[str, Any]) -> None:
    """A reload's removal in progress: its process was told to stop; the new master keeps its
    SIGKILL deadline (the spawner signals only a process that still runs) and its log pipe."""
    pid, due = row["pid"], row["timer"]
    if pid is None or due is None:
        return
    log.info("%s[%d] (removed from the config) is still stopping: SIGKILL in %.1fs if it has not exited",
             row["name"], pid, max(0.0, due - master.loop.time()))
    launcher = master.supervisor.launcher
    master.loop.call_later(max(0.0, due - master.loop.time()), lambda: launcher.signal(pid, signal.SIGKILL, True))
