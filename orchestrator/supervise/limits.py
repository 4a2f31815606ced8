"""Per-instance limits: memory (sampled every check_interval), max_lifetime, and, from the
notify protocol, timeout and max_requests.

Event-driven: lifetime, request and watchdog deadlines are timers armed when something
happens; only memory needs sampling, and the sampling timer runs only while some instance
has a memory limit. A soft-limit breach must be seen on two samples in a row (a brief
spike does not recycle a worker); a hard-limit breach acts at once. Each sample reads every
known process of a tree; new descendants are looked for every LOOK_EVERY samples (and on
an instance's first), staggered across the fleet, which halves the /proc work at 5,000
instances; an orphan the spawner attributes to an instance counts from the next sample.
"""

from __future__ import annotations

import collections
import logging
import os
import random
from typing import Any, Callable

from ..config.load import Policy
from .events import Event, Happened, Notified, PolicyChanged, StateChanged
from .instance import Instance
from ..loop import EventLoop, Timer
from ..procfs import process_group, stat_fields
from .states import State, Then
from .supervisor import Supervisor
from ..units import format_size

log = logging.getLogger("orch")
SOFT_SAMPLES = 2
LOOK_EVERY = 5  # samples between looks for a tree's new descendants
SAMPLE_SLICE = 100  # instances sampled per loop turn (see Limits._sample_slice)
SLICE_GAP = 0.001  # s between slices: a timer due later than this turn's, so exits are read between
# Notify messages from a process group the master does not know yet wait for its "spawned"
# this long, this many in all and per group: a flood from a process that never becomes an
# instance costs a fixed amount of memory (it grew the master by 352 MiB before).
EARLY_SECONDS, EARLY_TOTAL, EARLY_PER_GROUP = 5.0, 1000, 64
# Only a descendant of the master within this many generations can become an instance:
# instance -> spawner -> master, or instance -> zygote -> spawner -> master.
ANCESTRY_DEPTH = 4
STRANGER_SECONDS = 1.0  # a sender found to be no instance's is dropped this long without /proc reads
STRANGERS_MAX = 4096
DROP_REPORT_EVERY = 10.0
LIFETIME_JITTER = 0.1
GRACEFUL_REASONS = ("memory_soft", "max_lifetime", "max_requests")


def memory_verdict(policy: Policy, rss: int, over_soft: int) -> tuple[str | None, int]:
    """(limit to act on or None, consecutive samples over the soft limit) for one sample (pure)."""
    if policy.memory_hard is not None and rss > policy.memory_hard:
        return "memory_hard", over_soft
    if policy.memory_soft is not None and rss > policy.memory_soft:
        over_soft += 1
        return ("memory_soft" if over_soft >= SOFT_SAMPLES else None), over_soft
    return None, 0


def lifetime_delay(max_lifetime: float, rng: random.Random | None = None) -> float:
    """Up to 10% early, so replicas started together do not all recycle together (pure)."""
    return max_lifetime * (1 - (rng or random).uniform(0, LIFETIME_JITTER))


class EarlyNotes:
    """Notify messages of process groups not known yet, oldest first, bounded in age, in
    total and per group (a fast worker forked from a zygote can speak before the spawner's
    "spawned" arrives). `now` is passed in: pure apart from the clock it is given."""

    def __init__(self, seconds: float = EARLY_SECONDS, total: int = EARLY_TOTAL,
                 per_group: int = EARLY_PER_GROUP):
        self.seconds, self.total, self.per_group = seconds, total, per_group
        self.count = 0
        self.dropped = 0  # refused when full, or expired before their group became an instance
        self._groups: dict[int, list[tuple[float, dict[str, str]]]] = {}
        # arrival order, for expiry; an entry whose message was taken is skipped when it expires
        self._order: collections.deque[tuple[float, int]] = collections.deque()

    def keep(self, now: float, group: int, fields: dict[str, str]) -> bool:
        """Keep a message for `group`; False (and counted) when the bounds say no."""
        self.expire(now)
        kept = self._groups.get(group)
        if self.count >= self.total or (kept is not None and len(kept) >= self.per_group):
            self.dropped += 1  # the newest go: a worker's first words (READY=1) are kept
            return False
        self._groups.setdefault(group, []).append((now, fields))
        self._order.append((now, group))
        self.count += 1
        return True

    def take(self, now: float, group: int) -> list[dict[str, str]]:
        """The fresh messages of `group`, which just became an instance (stale ones are never
        replayed: the pid may have been recycled)."""
        self.expire(now)
        kept = self._groups.pop(group, [])
        self.count -= len(kept)
        return [fields for _, fields in kept]

    def expire(self, now: float) -> None:
        while self._order and now - self._order[0][0] >= self.seconds:
            sent, group = self._order.popleft()
            kept = self._groups.get(group)
            if kept and kept[0][0] == sent:
                kept.pop(0)
                self.count -= 1
                self.dropped += 1
                if not kept:
                    del self._groups[group]

    def __len__(self) -> int:
        return self.count


def descends_from(pid: int, ancestor: int, depth: int = ANCESTRY_DEPTH) -> bool:
    """Whether `ancestor` is among the first `depth` ancestors of `pid` (reads /proc)."""
    for _ in range(depth):
        fields = stat_fields(pid)
        if not fields:
            return False
        pid = int(fields[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


class Limits:
    """Arms and checks every limit; acts through the supervisor's stop and kill."""

    def __init__(self, supervisor: Supervisor, loop: EventLoop, check_interval: float):
        self.supervisor = supervisor
        self.loop = loop
        self.check_interval = check_interval
        self._sampler: Timer | None = None
        self._round = 0  # samples taken: staggers the looks for new descendants
        self.sampled = 0  # instance samples taken in all (a round goes in slices)
        self._early = EarlyNotes()
        self._early_purge: Timer | None = None
        self._strangers: dict[int, float] = {}  # pid -> until when its messages are dropped unread
        self._strangers_dropped = 0
        self._drop_report = 0  # notify_dropped when the last warning was logged
        self._drop_logged_at: float | None = None
        # kernel_memory.py, with cgroup = "auto": the kernel reports these instances' memory
        self.kernel_watched: Callable[[Instance], bool] = lambda inst: False
        supervisor.events.subscribe(self.on_event)

    # --- lifecycle ------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        """Arm limits when a process starts, drop its deadlines when it ends."""
        if isinstance(event, PolicyChanged):
            self.policy_changed(event.instance)
        elif isinstance(event, StateChanged):
            if event.started:
                self.on_start(event.instance)
            elif event.ended:
                self.on_exit(event.instance)

    def on_start(self, inst: Instance) -> None:
        inst.over_soft = 0
        self._arm_lifetime(inst)
        if inst.spec.policy.memory_hard or inst.spec.policy.memory_soft:
            self.ensure_sampling()
        if self._early.count and inst.pid is not None:
            for fields in self._early.take(self.loop.time(), inst.pid):  # sent before we knew this pid
                self._apply(inst, fields)

    def on_exit(self, inst: Instance) -> None:
        for timer in inst.limit_timers.values():
            timer.cancel()
        inst.limit_timers.clear()

    def policy_changed(self, inst: Instance) -> None:
        """A reload changed the policy in place: re-arm deadlines with the new values."""
        if inst.pid is not None:
            self._arm_lifetime(inst)
        self.ensure_sampling()

    def _arm(self, inst: Instance, key: str, delay: float, check: Any) -> None:
        old = inst.limit_timers.pop(key, None)
        if old is not None:
            old.cancel()
        pid = inst.pid

        def fire() -> None:
            inst.limit_timers.pop(key, None)
            if inst.pid == pid and inst.state is State.RUNNING:
                check()
        inst.limit_timers[key] = self.loop.call_later(delay, fire)

    def _arm_lifetime(self, inst: Instance) -> None:
        lifetime = inst.spec.policy.max_lifetime
        if lifetime:
            remaining = lifetime_delay(lifetime) - inst.uptime()
            self._arm(inst, "lifetime", remaining,
                      lambda: self.enforce(inst, "max_lifetime", f"up {inst.uptime():.1f}s"))
        else:
            old = inst.limit_timers.pop("lifetime", None)
            if old is not None:
                old.cancel()

    # --- notify protocol --------------------------------------------------------------
    @property
    def notify_dropped(self) -> int:
        """Notify messages dropped: from no instance, or kept too long waiting for one."""
        return self._strangers_dropped + self._early.dropped

    def on_notify(self, pid: int, fields: dict[str, str]) -> None:
        inst = self.supervisor.by_pid.get(pid)
        if inst is not None:
            self._apply(inst, fields)
            return
        now = self.loop.time()
        if self._strangers.get(pid, 0.0) > now:  # a flood costs a dict look-up per message
            self._drop(pid, now)
            return
        group = process_group(pid)
        inst = self.supervisor.by_pid.get(group) if group else None
        if inst is not None:  # a worker behind a wrapper: its group leader is the instance
            self._apply(inst, fields)
        elif group and descends_from(group, os.getpid()):
            # A fast worker (forked from a zygote) can speak before the spawner's "spawned"
            # reaches us: keep its messages, by process group, until its pid is known.
            if not self._early.keep(now, group, fields):  # counted there
                self._report_drops(pid, now)
            elif self._early_purge is None:
                self._early_purge = self.loop.call_later(EARLY_SECONDS, self._purge_early)
        else:  # no instance, and none can start as it: not a process of ours
            if len(self._strangers) >= STRANGERS_MAX:
                self._strangers.clear()
            self._strangers[pid] = now + STRANGER_SECONDS
            self._drop(pid, now)

    def _drop(self, pid: int, now: float) -> None:
        self._strangers_dropped += 1
        self._report_drops(pid, now)

    def _report_drops(self, pid: int, now: float) -> None:
        """Say how many were dropped, at most every DROP_REPORT_EVERY seconds."""
        if self._drop_logged_at is not None and now - self._drop_logged_at < DROP_REPORT_EVERY:
            return
        total = self.notify_dropped
        log.warning("notify: dropped %d messages from processes that are not instances (the latest "
                    "from pid %d), %d in all", total - self._drop_report, pid, total)
        self._drop_logged_at, self._drop_report = now, total

    def _purge_early(self) -> None:
        """Let go of messages no instance claimed in time (memory, not only replay, is bounded)."""
        self._early.expire(self.loop.time())
        self._early_purge = None
        if self._early.count:
            self._early_purge = self.loop.call_later(EARLY_SECONDS, self._purge_early)

    def _apply(self, inst: Instance, fields: dict[str, str]) -> None:
        policy = inst.spec.policy
        if "STATUS" in fields:
            inst.notify_status = fields["STATUS"]
        if fields.get("READY") == "1":
            self.supervisor.mark_ready(inst)
            self._arm_watchdog(inst)
        if fields.get("WATCHDOG") == "1":
            self._arm_watchdog(inst)
        if ("READY" in fields or "WATCHDOG" in fields) and inst.spec.probes:  # notify probes hear it
            self.supervisor.events.emit(Notified(inst, fields.get("READY") == "1", fields.get("WATCHDOG") == "1"))
        if fields.get("ORCH_BEGIN") == "1":
            inst.counts_requests = True
            watchdog = inst.limit_timers.pop("watchdog", None)
            if watchdog is not None:  # it reports requests: timeout is per request, not a heartbeat
                watchdog.cancel()
            if policy.timeout:
                self._arm(inst, "request", policy.timeout,
                          lambda: self.enforce(inst, "timeout", f"one request ran over {policy.timeout:g}s"))
        if fields.get("ORCH_END") == "1" or fields.get("ORCH_IDLE") == "1":
            timer = inst.limit_timers.pop("request", None)
            if timer is not None:
                timer.cancel()
            if fields.get("ORCH_END") == "1":
                inst.requests += 1
                if policy.max_requests and inst.requests >= policy.max_requests:
                    self.enforce(inst, "max_requests", f"{inst.requests} requests handled")
        if "ORCH_LIMIT" in fields:  # the worker ends itself; restart it at once when it exits
            inst.limit_kill = True
            inst.last_reason = fields["ORCH_LIMIT"] or "limit"
            self.supervisor.events.emit(Happened("limit", inst, {
                "limit": inst.last_reason, "value": "reported by the worker", "pid": inst.pid,
                "action": "the worker exits"}))

    def _arm_watchdog(self, inst: Instance) -> None:
        """`timeout` for a READY=1 worker that does not report requests: WATCHDOG=1 that often."""
        timeout = inst.spec.policy.timeout
        if timeout and not inst.counts_requests:
            self._arm(inst, "watchdog", timeout,
                      lambda: self.enforce(inst, "timeout", f"no WATCHDOG=1 for {timeout:g}s"))

    def rearm(self, inst: Instance, key: str, delay: float) -> None:
        """A `timeout` deadline ("watchdog" or "request") the master had armed before an
        upgrade's exec (handover/), due in `delay` seconds."""
        timeout = inst.spec.policy.timeout
        if timeout and key in ("watchdog", "request"):
            why = f"no WATCHDOG=1 for {timeout:g}s" if key == "watchdog" else f"one request ran over {timeout:g}s"
            self._arm(inst, key, delay, lambda: self.enforce(inst, "timeout", why))

    # --- memory -------------------------------------------------------------------------
    def ensure_sampling(self) -> None:
        if self._sampler is None and self._any_memory_limit():
            self._sampler = self.loop.call_later(self.check_interval, self._sample)

    def set_check_interval(self, seconds: float) -> None:
        self.check_interval = seconds
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        self.ensure_sampling()

    def _any_memory_limit(self) -> bool:
        return any((i.spec.policy.memory_soft or i.spec.policy.memory_hard) and not self.kernel_watched(i)
                   for i in self.supervisor.instances.values())

    def _sample(self) -> None:
        self._round += 1
        self._sample_slice(list(self.supervisor.instances.values()), 0, 0)

    def _sample_slice(self, fleet: list[Instance], start: int, watched: int) -> None:
        """SAMPLE_SLICE instances of this round, then the next slice on the next loop turn:
        a crash's exit waits for one slice, never for the whole fleet (at 5,000 a round in one
        callback held the loop 10-20 ms, and a replacement landing then waited for it)."""
        self._sampler = None
        turn = self._round % LOOK_EVERY
        chunk = fleet[start:start + SAMPLE_SLICE]
        watched += sum(self._sample_one(inst, turn) for inst in chunk)
        self.sampled += len(chunk)
        if start + SAMPLE_SLICE < len(fleet):
            self._sampler = self.loop.call_later(SLICE_GAP, lambda: self._sample_slice(fleet, start + SAMPLE_SLICE, watched))
        elif watched or self._any_memory_limit():
            self._sampler = self.loop.call_later(self.check_interval, self._sample)

    def _sample_one(self, inst: Instance, turn: int) -> bool:
        """Sample one instance's memory and act on its limits; whether it has one to sample."""
        pid, policy = inst.pid, inst.spec.policy
        # STOPPING too: a worker that ignores the stop signal must not grow past `hard`
        # for the whole stop_timeout.
        if pid is None or not (policy.memory_soft or policy.memory_hard) \
                or inst.state not in (State.RUNNING, State.STOPPING) or self.kernel_watched(inst):
            return False
        if policy.memory_measure == "rss":
            size = inst.rss = self.supervisor.trees.memory(pid, self.supervisor.spawner.orphans(pid),
                                                           pid % LOOK_EVERY == turn)
        else:
            size = inst.measured = shared_memory(self.supervisor.tree_pids(pid), policy.memory_measure)
        soft, hard = policy.memory_soft, policy.memory_hard
        if (not soft or size <= soft) and (not hard or size <= hard) and not inst.over_soft:
            return True  # the usual sample: under every limit, nothing to count down
        verdict, inst.over_soft = memory_verdict(policy, size, inst.over_soft)
        if verdict is not None:
            limit = policy.memory_hard if verdict == "memory_hard" else policy.memory_soft
            self.enforce(inst, verdict, f"{policy.memory_measure.upper()} {format_size(size)} "
                         f"over {format_size(limit or 0)}")
        return True

    # --- acting ---------------------------------------------------------------------------
    def enforce(self, inst: Instance, reason: str, detail: str) -> None:
        """Recycle an instance for a limit: graceful for soft limits, SIGKILL for hard ones;
        while stopping, only the hard memory limit acts (once)."""
        if inst.pid is None or inst.state not in (State.RUNNING, State.STOPPING):
            return
        if inst.state is State.STOPPING and (reason != "memory_hard" or inst.stop_reason == reason):
            return
        inst.limit_kills[reason] = inst.limit_kills.get(reason, 0) + 1
        self.supervisor.events.emit(Happened("limit", inst, {
            "limit": reason, "value": detail, "pid": inst.pid,
            "action": "graceful restart" if reason in GRACEFUL_REASONS else "SIGKILL"}))
        if reason in GRACEFUL_REASONS:
            log.warning("%s[%d] %s (%s): graceful stop, then restart", inst.name, inst.pid, reason, detail)
            self.supervisor.stop(inst, Then.RESTART, reason=reason)
        else:
            log.warning("%s[%d] %s (%s): SIGKILL to its whole process tree%s", inst.name, inst.pid,
                        reason, detail, "" if inst.state is State.STOPPING else ", then restart")
            self.supervisor.kill_now(inst, reason)


def shared_memory(pids: list[int], measure: str) -> int:
    """PSS or USS in bytes of these processes, by psutil (smaps_rollup: a few tens of us a
    process against about 4 us for the kept-fd statm read of `rss`; bench/RESULTS.md)."""
    import psutil  # only instances limited on pss or uss need it (its import: 20 ms at start)
    total = 0
    for pid in pids:
        try:
            total += getattr(psutil.Process(pid).memory_full_info(), measure)
        except psutil.Error:
            continue  # gone since the tree was read, or not ours to read
    return total
