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
