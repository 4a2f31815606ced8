"""Restart decisions after an exit (pure): whether, and after how long."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..config.load import Policy

JITTER = 0.1


@dataclass(frozen=True)
class RestartDecision:
    """What to do after an instance exited."""

    restart: bool
    delay: float
    failures: int       # consecutive early failures, this one included
    crashloop: bool     # the delay has reached backoff.max


def decide_restart(policy: Policy, *, success: bool, uptime: float, failures: int,
                   limit_kill: bool = False, rng: random.Random | None = None) -> RestartDecision:
    """Apply the restart policy and exponential backoff.

    A first crash, or one after a run of at least `min_uptime`, restarts at once; from the
    second consecutive early failure the delay starts at `backoff.initial` and doubles up to
    `backoff.max`, with +-10% jitter so replicas do not restart in lockstep. A kill for a
    limit (memory, timeout, max_requests, max_lifetime) restarts at once without counting.
    """
    if policy.restart == "never" or (policy.restart == "on-failure" and success and not limit_kill):
        return RestartDecision(False, 0.0, 0, False)
    if limit_kill:
        return RestartDecision(True, 0.0, 0, False)
    failures = 1 if uptime >= policy.min_uptime else failures + 1
    if failures <= 1:
        return RestartDecision(True, 0.0, failures, False)
    raw = policy.backoff_initial * 2 ** min(failures - 2, 64)  # capped: no overflow in long loops
    crashloop = raw >= policy.backoff_max
    delay = min(raw, policy.backoff_max)
    jitter = (rng or random).uniform(-JITTER, JITTER) * delay
    return RestartDecision(True, max(0.0, min(delay + jitter, policy.backoff_max)), failures, crashloop)


# Limits whose breach right after a start means the next start will breach again (a worker
# that loads 500 MiB at start-up under soft = 200 MiB): these back off. A recycle for
# max_requests or max_lifetime is the worker doing its work, and never backs off.
START_BREACHES = {"memory_soft": "over memory.soft", "memory_hard": "over memory.hard",
                  "timeout": "over timeout"}


def limit_at_start(reason: str | None, uptime: float, policy: Policy) -> str | None:
    """"over memory.soft at start" when a stop for that limit came within `min_uptime` of
    the start, so the restart backs off like a crash loop; else None (pure)."""
    if reason in START_BREACHES and uptime < policy.min_uptime:
        return f"{START_BREACHES[reason]} at start"
    return None


def decide_limit_restart(policy: Policy, *, uptime: float, failures: int,
                         rng: random.Random | None = None) -> RestartDecision:
    """The restart after a limit breach at start: backoff as for a crash, whatever `restart` says
    (a recycle always restarts) (pure)."""
    always = Policy(**{**policy.__dict__, "restart": "always"})
    return decide_restart(always, success=False, uptime=uptime, failures=failures, rng=rng)
