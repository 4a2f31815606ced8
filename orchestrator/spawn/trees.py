"""What belongs to an instance, seen from the spawner: its main process's tree, plus the
orphans the spawner inherits from it.

The spawner is a child subreaper, so a process whose parent exits (a double-forked daemon,
the children of a shell that ended) becomes the spawner's direct child. Such an orphan is
attributed to the instance it came from, cheaply and only for unknown direct children, by:
the environment cookie every child is started with (`ORCH_RUN` of this run, and
`ORCH_INSTANCE`), else its session (each main process leads a session of its own, which a
descendant keeps when it only changes process group, as rq's work-horse does), else its
process group. An orphan belongs to the live main process of its instance only if it
started after that process did; an orphan of an earlier, ended run of the instance is
ended on sight, as is everything left of a tree when its main process exits.
"""

from __future__ import annotations

import os
import signal
from ..procfs import children, env_value, environ, process_group, start_time, stat_fields, tree

GONE_MEMORY = 4096  # ended main processes remembered for attribution by session or group


class Leader:
    """One live main process of an instance."""

    __slots__ = ("pid", "name", "start", "orphans")

    def __init__(self, pid: int, name: str, start: int) -> None:
        self.pid, self.name, self.start = pid, name, start
        self.orphans: set[int] = set()


def cookie(env: bytes, run: str) -> str | None:
    """The instance named by an environment block, if it carries this run's cookie (pure)."""
    if env_value(env, "ORCH_RUN") != run:
        return None
    return env_value(env, "ORCH_INSTANCE")


def signal_pid(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class Lineage:  # pragma: no cover - runs in the spawner; covered by integration tests
    """The spawner's map of main processes, their adopted orphans and their trees."""

    def __init__(self, run: str):
        self.run = run
        self.leaders: dict[int, Leader] = {}
        self.by_name: dict[str, Leader] = {}
        self.owner: dict[int, Leader] = {}   # adopted orphan pid -> its main process
        self.strays: set[int] = set()        # orphans attributed to no instance
        self.gone: dict[int, str] = {}       # ended main process pid -> instance name

    def started(self, pid: int, name: str | None, since: int | None = None) -> None:
        """A main process was spawned (directly or by a zygote). `since`: a lower bound of
        its start time in clock ticks (taken before the spawn), which spares a /proc read;
        an orphan is adopted only if it started no earlier than this."""
        if not name:
            return
        leader = Leader(pid, name, since if since is not None else start_time(pid) or 0)
        self.leaders[pid] = leader
        self.by_name[name] = leader

    def exited(self, pid: int) -> list[int]:
        """A main process ended: forget it; returns its adopted orphans, to be ended."""
        leader = self.leaders.pop(pid, None)
        if leader is None:
            return []
        if self.by_name.get(leader.name) is leader:
            del self.by_name[leader.name]
        self.gone[pid] = leader.name
        while len(self.gone) > GONE_MEMORY:
            self.gone.pop(next(iter(self.gone)))
        for orphan in leader.orphans:
            self.owner.pop(orphan, None)
        return sorted(leader.orphans)

    def reaped(self, pid: int) -> Leader | None:
        """An orphan the spawner reaped; returns the main process it was attributed to."""
        self.strays.discard(pid)
        leader = self.owner.pop(pid, None)
        if leader is not None:
            leader.orphans.discard(pid)
        return leader

    def members(self, pid: int) -> list[int]:
        """Every live process of the instance whose main process is `pid`."""
        found = tree(pid)
        leader = self.leaders.get(pid)
        for orphan in sorted(leader.orphans) if leader else ():
            found += tree(orphan)
        return found

    def signal(self, pid: int, signum: int) -> list[int]:
        """`signum` to the whole instance: its process group, then each member outside it
        (once each: a second SIGTERM can cut a graceful exit short). Returns the members."""
        signal_group(pid, signum)
        members = self.members(pid)
        for member in members:
            if process_group(member) != pid:
                signal_pid(member, signum)
        return members

    def attribute(self, pid: int, fields: list[bytes]) -> str | None:
        """The instance an orphan belongs to (from its /proc stat `fields`), or None."""
        group, session = int(fields[2]), int(fields[3])
        env = environ(pid)
        name = cookie(env, self.run) if env is not None else None
        for owner in (session, group):
            if name is not None:
                break
            leader = self.leaders.get(owner)
            name = leader.name if leader is not None else self.gone.get(owner)
        return name

    def scan(self, *known: set[int]) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """Look at the spawner's direct children that are in none of the `known` sets (main
        processes, zygotes) nor seen before: returns (adopted (main pid, orphan), orphans
        ended because their instance's main process is gone, strays)."""
        adopted, ended, strays = [], [], []
        # One set difference in C: at 5,000 children a test per pid took most of a look.
        new = set(children(os.getpid())).difference(*known, self.owner, self.strays)
        for pid in sorted(new):
            fields = stat_fields(pid)
            if not fields or fields[0] in (b"Z", b"X"):
                continue  # exited, reaped soon: nothing to attribute
            name, started = self.attribute(pid, fields), int(fields[19])
            if name is None:
                self.strays.add(pid)
                strays.append(pid)
                continue
            leader = self.by_name.get(name)
            if leader is not None and started >= leader.start:
                leader.orphans.add(pid)
                self.owner[pid] = leader
                adopted.append((leader.pid, pid))
            else:
                ended.append(pid)
                for member in tree(pid):
                    signal_pid(member, signal.SIGKILL)
        return adopted, ended, strays
