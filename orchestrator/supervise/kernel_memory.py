"""Memory limits the kernel enforces and reports (`[orchestrator] cgroup = "auto"`).

An instance with a `memory` limit (not preloaded) starts in a cgroup of its own
(spawn/cgroups.py). Measured by "rss", with the v1 memory controller, its `hard` is the cgroup's
`memory.limit_in_bytes`, with the kernel's OOM killer turned off for it: at the limit the
kernel reclaims the group's page cache, then holds its allocations, and tells us through an
eventfd; we SIGKILL the whole tree (`memory_hard`, as the sampler did). Its `soft` is a
usage threshold on the same eventfd: crossing it wakes us, and only then is the instance
read, every check_interval while over, and recycled gracefully after two reads in a row
over `soft` (`memory_soft`). What is compared is the working set, usage minus the
inactive file cache the kernel would drop first, as Kubernetes does. So an idle fleet under
its limits costs nothing per second, however large (Limits samples only the rest).

When the instance ends, whatever is still in its cgroup (a double-forked daemon that left
its session and cleared its environment) is killed (`cgroup.kill` in v2, each member in v1,
again until none is left), and the cgroup is
removed once empty; the spawner (and the guard, if the spawner dies) sweep the run's
cgroups when the master goes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..loop import EventLoop, Timer
from ..procfs import is_running, start_time
from ..spawn import cgroups
from ..units import format_size
from .events import Event, PolicyChanged, StateChanged
from .grace_writes import GraceWrites, write_registration
from .limits import SOFT_SAMPLES

if TYPE_CHECKING:
    from .instance import Instance
    from .limits import Limits
    from .supervisor import Supervisor

log = logging.getLogger("orch")
REGISTER_RETRIES = (0.005, 0.02, 0.05, 0.2, 0.5, 1.0)  # the child makes its cgroup as it starts
REMOVE_RETRIES = (0.01, 0.05, 0.2, 1.0, 5.0)  # killed members are reaped by the spawner


def working_set(usage: int, stat: str) -> int:
    """The cgroup's usage minus its inactive file cache (pure; v1 memory.stat's
    total_inactive_file, v2's inactive_file)."""
    for line in stat.splitlines():
        key, _, value = line.partition(" ")
        if key in ("total_inactive_file", "inactive_file"):
            return max(0, usage - int(value))
    return usage


def under_oom(oom_control: str) -> bool:
    """Whether v1 memory.oom_control says the group waits at its limit (pure)."""
    return any(line.split() == ["under_oom", "1"] for line in oom_control.splitlines())


class Watch:
    """One running instance's cgroups and its eventfd."""

    __slots__ = ("dirs", "memory", "efd", "over_soft", "timer", "tries", "gen")

    def __init__(self, dirs: tuple[str, ...], memory: str | None):
        self.dirs = dirs
        self.memory = memory
        self.efd = -1
        self.over_soft = 0
        self.timer: Timer | None = None
        self.tries = 0
        self.gen = 0  # counts registrations: an answer from the pool is for the latest only


class KernelMemory:
    """Plans each start's cgroups, watches running instances' memory events, cleans up."""

    def __init__(self, loop: EventLoop, supervisor: "Supervisor", limits: "Limits", run: cgroups.Layout,
                 check_interval: float):
        self.loop = loop
        self.supervisor = supervisor
        self.limits = limits
        self.run = run
        self.check_interval = check_interval
        self.pending: dict[str, tuple[str, ...]] = {}  # instance name -> dirs of the start in flight
        self.watches: dict[str, Watch] = {}  # instance name -> its running process's cgroups
        self.run_id = ""
        self.made: bool | None = None  # the run's cgroups: not tried yet, made, or not possible
        self.writes = GraceWrites(loop)
        supervisor.events.subscribe(self.on_event)

    @classmethod
    def start(cls, loop: EventLoop, supervisor: "Supervisor", limits: "Limits", run: str,
              check_interval: float) -> "KernelMemory":
        """Planned into every spawn; the run's cgroups are made with the first instance
        that needs one (a fleet without memory limits never touches cgroupfs)."""
        kernel = cls(loop, supervisor, limits, cgroups.Layout(None, None), check_interval)
        kernel.run_id = run
        limits.kernel_watched = kernel.watched
        supervisor.launcher.cgroup_plan = kernel.plan
        return kernel

    def _make_run_dirs(self) -> bool:
        """The run's cgroups where the kernel lets us create them, else False (said once)."""
        if self.made is None:
            own = cgroups.detect()
            stale = cgroups.stale_paths(own, lambda pid, ticks: is_running(pid) and start_time(pid) == ticks)
            if stale:
                log.warning("ending what is left in %d cgroups of dead runs: %s", len(stale), ", ".join(stale[:3]))
                cgroups.sweep(stale, 1.0)
            layout, why = cgroups.make_run_dirs(own, self.run_id, (os.getpid(), start_time(os.getpid()) or 0))
            self.run, self.made = layout, layout.unified is not None or layout.memory is not None
            if not self.made:
                log.info("cgroup = auto: no cgroup of our own (%s); memory limits are sampled every "
                         "check_interval (run as root, or under systemd with Delegate=yes)", "; ".join(why))
            elif layout.memory is None:
                log.info("cgroup = auto: instances with a memory limit get a cgroup for membership; "
                         "their memory is sampled (%s)", "; ".join(why))
        return self.made

    # --- planning (at each spawn) -------------------------------------------------------
    def plan(self, spec: Any, token: int) -> cgroups.Join | None:
        """The cgroups this start joins, or None (no memory limit, or preloaded)."""
        policy = spec.policy
        if not (policy.memory_soft or policy.memory_hard) or (spec.python and spec.python.preload) \
                or not self._make_run_dirs():
            return None
        kernel = self.run.memory is not None and policy.memory_measure == "rss"
        join = cgroups.join_plan(self.run, spec.name, token, policy.memory_hard if kernel else None)
        if kernel:  # the kernel holds allocations at the limit; we kill the whole tree on its word
            leaf = join.dirs[-1]
            join = join._replace(writes=join.writes + ((os.path.join(leaf, "memory.oom_control"), "1"),))
        old = self.pending.pop(spec.name, None)
        if old is not None:
            self._remove_later(old)  # a start that never ran (a failed spawn)
        self.pending[spec.name] = join.dirs
        return join

    def watched(self, inst: "Instance") -> bool:
        """Whether the kernel reports this instance's memory (Limits then does not sample it)."""
        watch = self.watches.get(inst.name)
        return watch is not None and watch.memory is not None

    # --- events ----------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if isinstance(event, PolicyChanged):
            self._policy_changed(event.instance)
        if not isinstance(event, StateChanged):
            return
        if event.started:
            self._watch(event.instance)
        elif event.ended:
            self._release(event.instance)

    def _watch(self, inst: "Instance") -> None:
        dirs = self.pending.pop(inst.name, None)
        if dirs is None:
            return
        kernel = inst.spec.policy.memory_measure == "rss"  # pss, uss: a cgroup for membership only
        memory = next((d for d in dirs if kernel and self.run.memory and d.startswith(self.run.memory + "/")), None)
        watch = self.watches[inst.name] = Watch(dirs, memory)
        if memory is not None:
            self._register(inst, watch)

    def _register(self, inst: "Instance", watch: Watch) -> None:
        """An eventfd for the group's usage crossing `soft` and for its OOM state."""
        soft = inst.spec.policy.memory_soft
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        control = os.path.join(watch.memory, "cgroup.event_control")
        try:
            write_registration(control, efd, os.path.join(watch.memory, "memory.oom_control"), "")
        except FileNotFoundError:  # the child has not made it yet
            os.close(efd)
            if watch.tries < len(REGISTER_RETRIES) and self.watches.get(inst.name) is watch:
                watch.tries += 1
                watch.timer = self.loop.call_later(REGISTER_RETRIES[watch.tries - 1],
                                                   lambda: self._retry(inst, watch))
            else:
                self._fall_back(inst, watch, "its cgroup never appeared")
            return
        except OSError as exc:
            os.close(efd)
            self._fall_back(inst, watch, exc.strerror or str(exc))
            return
        watch.efd, watch.gen = efd, watch.gen + 1
        self.loop.add_reader(efd, lambda: self._woken(inst, watch))
        if soft:  # waits for an RCU grace period in the kernel: off the loop (grace_writes.py)
            self.writes.register(control, efd, os.path.join(watch.memory, "memory.usage_in_bytes"),
                                 str(soft), lambda error, gen=watch.gen: self._threshold_set(inst, watch, gen, error))
        else:
            self._check(inst, watch)

    def _threshold_set(self, inst: "Instance", watch: Watch, gen: int, error: OSError | None) -> None:
        """The `soft` threshold is registered (or not): read once, since it fires only when
        crossed and the instance may be over it already."""
        if self.watches.get(inst.name) is not watch or watch.gen != gen or watch.efd < 0:
            return  # ended, or registered again since (a reload changed its limits)
        if error is not None and not isinstance(error, FileNotFoundError):
            self._fall_back(inst, watch, error.strerror or str(error))
            return
        self._check(inst, watch)

    def _policy_changed(self, inst: "Instance") -> None:
        """A reload changed the limits in place: the cgroup's limit and threshold follow."""
        watch = self.watches.get(inst.name)
        if watch is None or watch.memory is None or watch.efd < 0:
            return
        self.loop.remove_reader(watch.efd)
        os.close(watch.efd)
        watch.efd, watch.tries, watch.over_soft = -1, 0, 0
        hard = inst.spec.policy.memory_hard
        try:
            with open(os.path.join(watch.memory, "memory.limit_in_bytes"), "w") as f:
                f.write(str(hard or -1))
        except OSError as exc:  # EBUSY: the kernel cannot bring it under the new limit
            self.limits.enforce(inst, "memory_hard", f"over the new hard limit {format_size(hard or 0)} "
                                f"(cgroup: {exc.strerror})")
            return
        self._register(inst, watch)

    def _retry(self, inst: "Instance", watch: Watch) -> None:
        watch.timer = None
        if self.watches.get(inst.name) is watch:
            self._register(inst, watch)

    def _fall_back(self, inst: "Instance", watch: Watch, why: str) -> None:
        log.warning("%s: no kernel memory events (%s): its memory is sampled", inst.name, why)
        watch.memory = None
        self.limits.ensure_sampling()

    def _woken(self, inst: "Instance", watch: Watch) -> None:
        try:
            os.eventfd_read(watch.efd)
        except BlockingIOError:
            return
        self._check(inst, watch)

    def _check(self, inst: "Instance", watch: Watch) -> None:
        """Read the group once: at its hard limit, or how far over its soft one."""
        if watch.timer is not None:
            watch.timer.cancel()
            watch.timer = None
        if self.watches.get(inst.name) is not watch or watch.memory is None:
            return
        policy = inst.spec.policy
        soft = policy.memory_soft
        try:
            oom = _read(os.path.join(watch.memory, "memory.oom_control"))
            usage = int(_read(os.path.join(watch.memory, "memory.usage_in_bytes")))
            # memory.stat flushes the statistics of every cgroup: only when it may matter
            # (at every start it made 1,000 starts quadratic)
            size = working_set(usage, _read(os.path.join(watch.memory, "memory.stat"))) \
                if soft and usage > soft else usage
        except (OSError, ValueError):
            return  # removed: the instance is ending
        if under_oom(oom):
            self.limits.enforce(inst, "memory_hard", f"the kernel holds its allocations at "
                                f"{format_size(policy.memory_hard or 0)} (cgroup, {format_size(usage)} charged)")
            return
        watch.over_soft = watch.over_soft + 1 if soft and size > soft else 0
        if watch.over_soft >= SOFT_SAMPLES:
            self.limits.enforce(inst, "memory_soft", f"working set {format_size(size)} over "
                                f"{format_size(soft or 0)} (cgroup)")
        elif watch.over_soft:  # over, once: read again after check_interval
            watch.timer = self.loop.call_later(self.check_interval, lambda: self._check(inst, watch))

    def _release(self, inst: "Instance") -> None:
        """The instance's process is gone: end what is left in its cgroup, then remove it."""
        watch = self.watches.pop(inst.name, None)
        if watch is None:
            return
        if watch.timer is not None:
            watch.timer.cancel()
        if watch.efd >= 0:
            self.loop.remove_reader(watch.efd)
            os.close(watch.efd)
        left = [pid for path in watch.dirs[:1] for pid in cgroups.members(path)]
        if left:
            log.warning("%s: ending %d processes left in its cgroup (%s)", inst.name, len(left),
                        ", ".join(map(str, left[:5])))
        self._remove_later(watch.dirs)

    def _remove_later(self, dirs: tuple[str, ...], attempt: int = 0) -> None:
        for path in dirs:
            cgroups.kill(path)
        left = tuple(path for path in dirs if not _removed(path))
        if left and attempt < len(REMOVE_RETRIES):
            self.loop.call_later(REMOVE_RETRIES[attempt], lambda: self._remove_later(left, attempt + 1))
        elif left:
            log.warning("cgroups not removed, still in use: %s", ", ".join(left))

    def close(self) -> None:
        """The master is exiting (the spawner has ended every tree): remove every cgroup."""
        self.writes.close()
        for name in list(self.watches):
            watch = self.watches.pop(name)
            if watch.efd >= 0:
                os.close(watch.efd)
        paths = [p for p in self.run if p is not None]
        cgroups.sweep(paths, 1.0)


def _read(path: str) -> str:
    return Path(path).read_text()


def _removed(path: str) -> bool:
    try:
        return cgroups.remove(path)
    except OSError:
        return False
