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

import logging
import random
from typing import Any

from ..config.load import Policy
from .events import Event, PolicyChanged, StateChanged
from .instance import Instance
from ..loop import EventLoop, Timer
from ..observe.procfs import process_group
from .states import State, Then
from ..units import format_size

log = logging.getLogger("orch")
SOFT_SAMPLES = 2
LOOK_EVERY = 5  # samples between looks for a tree's new descendants
EARLY_MAX = 1024  # process groups whose notify messages may wait for their "spawned"
EARLY_SECONDS = 10.0
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


class Limits:
    """Arms and checks every limit; acts through the supervisor's stop and kill."""

    def __init__(self, supervisor: Any, loop: EventLoop, check_interval: float):
        self.supervisor = supervisor
        self.loop = loop
        self.check_interval = check_interval
        self._sampler: Timer | None = None
        self._round = 0  # samples taken: staggers the looks for new descendants
        self._early: dict[int, list[tuple[float, dict[str, str]]]] = {}  # process group -> messages
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
        for sent, fields in self._early.pop(inst.pid, ()):  # sent before we knew this pid
            if self.loop.time() - sent < EARLY_SECONDS:  # never replay to a recycled pid
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
    def instance_for(self, pid: int) -> Instance | None:
        inst = self.supervisor.by_pid.get(pid)
        if inst is None:
            group = process_group(pid)
            inst = self.supervisor.by_pid.get(group) if group else None
        return inst

    def on_notify(self, pid: int, fields: dict[str, str]) -> None:
        inst = self.instance_for(pid)
        if inst is None:
            # A fast worker (forked from a zygote) can speak before the spawner's "spawned"
            # reaches us: keep its messages, by process group, until its pid is known.
            group = process_group(pid) or pid
            self._early.setdefault(group, []).append((self.loop.time(), fields))
            while len(self._early) > EARLY_MAX:
                self._early.pop(next(iter(self._early)))
            return
        self._apply(inst, fields)

    def _apply(self, inst: Instance, fields: dict[str, str]) -> None:
        policy = inst.spec.policy
        if "STATUS" in fields:
            inst.notify_status = fields["STATUS"]
        if fields.get("READY") == "1":
            self.supervisor.mark_ready(inst)
            self._arm_watchdog(inst)
        if fields.get("WATCHDOG") == "1":
            self._arm_watchdog(inst)
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

    def _arm_watchdog(self, inst: Instance) -> None:
        """`timeout` for a READY=1 worker that does not report requests: WATCHDOG=1 that often."""
        timeout = inst.spec.policy.timeout
        if timeout and not inst.counts_requests:
            self._arm(inst, "watchdog", timeout,
                      lambda: self.enforce(inst, "timeout", f"no WATCHDOG=1 for {timeout:g}s"))

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
        return any(i.spec.policy.memory_soft or i.spec.policy.memory_hard
                   for i in self.supervisor.instances.values())

    def _sample(self) -> None:
        self._sampler = None
        watched = 0
        self._round += 1
        turn = self._round % LOOK_EVERY
        memory, orphans = self.supervisor.trees.memory, self.supervisor.spawner.orphans
        sampled = (State.RUNNING, State.STOPPING)
        for inst in list(self.supervisor.instances.values()):
            pid, policy = inst.pid, inst.spec.policy
            # STOPPING too: a worker that ignores the stop signal must not grow past `hard`
            # for the whole stop_timeout.
            if pid is None or not (policy.memory_soft or policy.memory_hard) or inst.state not in sampled:
                continue
            watched += 1
            size = inst.rss = memory(pid, orphans(pid), pid % LOOK_EVERY == turn)
            soft, hard = policy.memory_soft, policy.memory_hard
            if (not soft or size <= soft) and (not hard or size <= hard) and not inst.over_soft:
                continue  # the usual sample: under every limit, nothing to count down
            verdict, inst.over_soft = memory_verdict(policy, size, inst.over_soft)
            if verdict is not None:
                limit = policy.memory_hard if verdict == "memory_hard" else policy.memory_soft
                self.enforce(inst, verdict, f"RSS {format_size(size)} over {format_size(limit or 0)}")
        if watched or self._any_memory_limit():
            self._sampler = self.loop.call_later(self.check_interval, self._sample)

    # --- acting ---------------------------------------------------------------------------
    def enforce(self, inst: Instance, reason: str, detail: str) -> None:
        """Recycle an instance for a limit: graceful for soft limits, SIGKILL for hard ones;
        while stopping, only the hard memory limit acts (once)."""
        if inst.pid is None or inst.state not in (State.RUNNING, State.STOPPING):
            return
        if inst.state is State.STOPPING and (reason != "memory_hard" or inst.stop_reason == reason):
            return
        inst.limit_kills[reason] = inst.limit_kills.get(reason, 0) + 1
        if reason in GRACEFUL_REASONS:
            log.warning("%s[%d] %s (%s): graceful stop, then restart", inst.name, inst.pid, reason, detail)
            self.supervisor.stop(inst, Then.RESTART, reason=reason)
        else:
            log.warning("%s[%d] %s (%s): SIGKILL to its whole process tree%s", inst.name, inst.pid,
                        reason, detail, "" if inst.state is State.STOPPING else ", then restart")
            self.supervisor.kill_now(inst, reason)
