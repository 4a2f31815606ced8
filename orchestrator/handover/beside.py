"""A spawner of an older orch kept beside the new master's own, after an upgrade into code
whose spawner protocol differs (spawn/request.py: PROTOCOL changed, CORE the same).

The new master cannot ask the old spawner for anything it does not understand, and every
protocol keeps the core (request.py: CORE): signals to its children, their exit reports,
orphan bookkeeping and "exit". So, rather than teaching the new master every old message,
it starts a spawner of its own code (its own guard, a new run cookie) for every start and
restart from then on, and keeps the old one only for the processes it already runs: their
signals go to it (Launcher.divert), their exits come from it, and once the last has exited
it is told to exit (it stops its guard). A SIGKILLed master closes both sockets: each
spawner ends its own children, as when it was the only one. An upgrade while old spawners
still run carries them (the record lists each, and its socket crosses exec as the spawner's
does): the next master keeps them beside its own too.

Why a new cookie: each guard then sweeps only what its own spawner started (the old guard
finds the state file naming the new run and goes by its cookie alone), so an old spawner
killed from outside takes only its own children with it.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

from ..spawn.orphans import kill_groups, state_path
from ..spawn.spawner import SpawnerClient
from .resume import Handover
from .state import spawner_protocol

log = logging.getLogger("orch")
KILLED = int(signal.SIGKILL)  # the wait status of a process SIGKILLed (the old spawner's guard ends them)


Olds = list[tuple[SpawnerClient, dict[str, Any]]]  # (client, {"version", "core", "pids"}) of each old spawner


def spawners(record: dict[str, Any], taken: Any, sock: Any, settings: Any) -> tuple[SpawnerClient, Olds]:
    """(the spawner the new master starts and signals through, the old ones kept beside it):
    the running spawner itself when it speaks this code's protocol, else a fresh one and the
    running one among the old; those an earlier upgrade kept beside stay beside."""
    running_row = record["spawner"]
    running = SpawnerClient(running_row["pid"], sock, running_row["run"])
    olds: Olds = [(SpawnerClient(row["pid"], taken.sock(row["fd"]), row["run"]), row)
                  for row in running_row.get("beside", [])]
    if running_row.get("protocol") in (None, spawner_protocol()):
        return running, olds
    limit = record["master"].get("fd_limit")
    # posix_spawn, before any thread of this master starts: a fresh interpreter of this code
    fresh = SpawnerClient.start(f"orch: spawner {settings.name}", fd_limit=tuple(limit) if limit else None,
                                state=str(state_path(settings.pidfile)))
    log.info("upgrade: the running spawner (pid %d, orch %s) speaks another protocol: spawner %d runs "
             "every start from now on, and the old one only until its last child exits",
             running.pid, running_row.get("version"), fresh.pid)
    theirs = {(pid, started) for _, row in olds for pid, started in row["pids"]}
    pids = [[row["pid"], row.get("started_at")] for row in record["instances"]
            if row.get("pid") is not None and (row["pid"], row.get("started_at")) not in theirs]
    return fresh, [*olds, (running, {"version": running_row.get("version"), "core": running_row.get("core", 1),
                                     "pids": pids})]


class BesideHandover(Handover):
    """A handover that keeps old spawners beside the new master's (cli/resume.py)."""

    def __init__(self, record: dict[str, Any], taken: Any, olds: Olds):
        super().__init__(record, taken)
        self.olds = olds

    def restore(self, master: Any) -> Any:
        plan = super().restore(master)
        if master.spawner.pid != self.record["spawner"]["pid"]:  # a fresh one: it starts from now on
            master.spawner_took_over(self.record["spawner"]["pid"])
        for client, row in self.olds:
            OldSpawner(master, client, row)
        return plan


def divert_all(olds: list["OldSpawner"]) -> Any:
    """Launcher.divert over every old spawner: each takes the orders about its processes."""
    def divert(orders: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
        for old in list(olds):
            orders = old.divert(orders)
        return orders
    return divert


class OldSpawner:
    """An old spawner, for the processes it runs: their signals and exits, then its retirement."""

    def __init__(self, master: Any, client: SpawnerClient, row: dict[str, Any]):
        self.master, self.client, self.sup = master, client, master.supervisor
        self.version, self.core = row.get("version"), row.get("core", 1)
        # main pid -> its start (monotonic): a pid the new spawner reuses is no longer this one's
        self.pids: dict[int, float | None] = {pid: started for pid, started in row["pids"]}
        client.adopted = master.spawner.adopted  # one map of orphans: status sees every spawner's
        master.upgrader.beside.append(self)
        self.sup.launcher.divert = divert_all(master.upgrader.beside)
        master.loop.add_reader(client.fileno(), self._readable)
        if not self.pids:
            self.retire()

    def status(self) -> dict[str, Any]:
        """For `orch status`: the old spawner's version, pid and how many processes it still runs."""
        return {"version": self.version, "pid": self.client.pid, "instances": len(self.pids)}

    def handover(self, kept: Any) -> dict[str, Any]:
        """For the next upgrade's record (capture.py): it stays beside the next master too."""
        return {"pid": self.client.pid, "run": self.client.run, "version": self.version, "core": self.core,
                "fd": kept(self.client.fileno()), "pids": [[pid, started] for pid, started in self.pids.items()]}

    def owns(self, pid: int) -> bool:
        """The old spawner runs this main pid (not a new process that got the same pid)."""
        if pid not in self.pids:
            return False
        inst = self.sup.by_pid.get(pid)
        return inst is None or inst.started_at == self.pids[pid]

    def divert(self, orders: list[tuple[int, int, bool]]) -> list[tuple[int, int, bool]]:
        """Send the old spawner the orders about its processes; return the others."""
        mine: list[tuple[int, int, bool]] = []
        rest: list[tuple[int, int, bool]] = []
        for order in orders:
            (mine if self.owns(order[0]) else rest).append(order)
        if mine:
            try:
                self.client.signal(mine)
            except OSError:
                pass  # it is gone: its EOF says so, and its guard ends its children
        return rest

    def _readable(self) -> None:
        for event in self.client.receive():
            if event[0] == "exited":
                for pid, status in event[1]:
                    self._exited(pid, status)
            elif event[0] == "eof":
                self._lost()
                return
        if not self.pids:
            self.retire()
        self.sup.flush()  # replacements (on the new spawner) leave now

    def _exited(self, pid: int, status: int) -> None:
        if pid not in self.pids:
            return
        mine = self.owns(pid)
        del self.pids[pid]
        if mine:
            self.sup._exited(pid, status)

    def retire(self) -> None:
        """Its last process is gone: it exits (reaped by the master's SIGCHLD handling)."""
        log.info("the spawner of orch %s (pid %d) has no child left: it exits", self.version, self.client.pid)
        self._close(exit=True)

    def _lost(self) -> None:
        """It died (killed from outside): its guard ends its children (by its cookie); they
        count as SIGKILLed. Their sessions are SIGKILLed here too, so that no replacement
        starts beside a process still running; no look over every process (end_record's),
        which blocked the loop for seconds on a loaded machine."""
        log.error("the spawner of orch %s (pid %d) died, and its %d instances with it", self.version,
                  self.client.pid, len(self.pids))
        self._close(exit=False)
        kill_groups((pid, inst.start_ticks) for pid in self.pids if (inst := self.sup.by_pid.get(pid)) is not None)
        for pid in list(self.pids):
            self._exited(pid, KILLED)
        self.sup.flush()

    def _close(self, exit: bool) -> None:
        self.master.loop.remove_reader(self.client.fileno())
        if exit:
            self.client.exit()
        self.client.sock.close()
        olds = self.master.upgrader.beside
        if self in olds:
            olds.remove(self)
        if not olds:
            self.sup.launcher.divert = None
