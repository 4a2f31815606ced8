"""decide_restart(): restart policies, exponential backoff, crash-loop detection, jitter."""

from __future__ import annotations

import random

import pytest

from orchestrator.supervise.backoff import JITTER, RestartDecision, decide_restart
from orchestrator.config.load import Policy

POLICY = Policy(restart="always", backoff_initial=1.0, backoff_max=8.0, min_uptime=5.0)


class FixedJitter(random.Random):
    """A random source whose uniform() always returns the same fraction (an input, not a mock)."""

    def __init__(self, fraction: float):
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        assert (a, b) == (-JITTER, JITTER)
        return self.fraction


NO_JITTER = FixedJitter(0.0)


# (failures so far, uptime) -> (delay, failures after, crashloop)
@pytest.mark.parametrize("failures,uptime,delay,after,crashloop", [
    (0, 0.1, 0.0, 1, False),     # first crash: at once
    (1, 0.1, 1.0, 2, False),     # second consecutive early failure: backoff.initial
    (2, 0.1, 2.0, 3, False),     # doubling
    (3, 4.9, 4.0, 4, False),
    (4, 0.0, 8.0, 5, True),      # reached backoff.max
    (5, 0.1, 8.0, 6, True),      # capped
    (30, 0.1, 8.0, 31, True),
    (7, 5.0, 0.0, 1, False),     # ran for min_uptime: counter reset, at once
    (7, 3600.0, 0.0, 1, False),
])
def test_backoff_sequence(failures, uptime, delay, after, crashloop):
    decision = decide_restart(POLICY, success=False, uptime=uptime, failures=failures, rng=NO_JITTER)
    assert decision == RestartDecision(True, delay, after, crashloop)


def test_long_crash_loop_stays_capped():
    # A supervisor feeds decision.failures back in; after ~17h at a 60s cap this passes 1025.
    policy = Policy(backoff_initial=1.0, backoff_max=60.0)
    decision = decide_restart(policy, success=False, uptime=0.0, failures=2000, rng=NO_JITTER)
    assert decision == RestartDecision(True, 60.0, 2001, True)


@pytest.mark.parametrize("restart,success,limit_kill,expected", [
    ("never", False, False, False),
    ("never", True, False, False),
    ("never", False, True, False),
    ("on-failure", True, False, False),
    ("on-failure", False, False, True),
    ("on-failure", True, True, True),
    ("always", True, False, True),
    ("always", False, False, True),
    ("always", True, True, True),
])
def test_restart_policies(restart, success, limit_kill, expected):
    policy = Policy(restart=restart, min_uptime=5.0)
    decision = decide_restart(policy, success=success, uptime=60.0, failures=0, limit_kill=limit_kill,
                              rng=NO_JITTER)
    assert decision.restart is expected
    assert decision.delay == 0.0
    assert decision.crashloop is False


@pytest.mark.parametrize("failures", [0, 1, 4, 10])
def test_limit_kill_restarts_at_once(failures):
    decision = decide_restart(POLICY, success=False, uptime=0.1, failures=failures, limit_kill=True,
                              rng=NO_JITTER)
    assert decision.restart and decision.delay == 0.0 and not decision.crashloop


@pytest.mark.parametrize("fraction,failures,delay", [
    (-0.1, 1, 0.9),
    (0.1, 1, 1.1),
    (0.1, 3, 4.4),
    (-0.1, 4, 7.2),
    (0.1, 4, 8.0),   # never above backoff.max
    (0.1, 9, 8.0),
])
def test_jitter_extremes(fraction, failures, delay):
    decision = decide_restart(POLICY, success=False, uptime=0.0, failures=failures, rng=FixedJitter(fraction))
    assert decision.delay == pytest.approx(delay)


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 5])
def test_jitter_bounds_with_seeded_random(failures):
    base = min(POLICY.backoff_initial * 2 ** (failures - 1), POLICY.backoff_max)
    delays = [decide_restart(POLICY, success=False, uptime=0.0, failures=failures,
                             rng=random.Random(seed)).delay for seed in range(200)]
    assert all(base * 0.9 - 1e-9 <= d <= min(base * 1.1, POLICY.backoff_max) + 1e-9 for d in delays)
    assert max(delays) <= POLICY.backoff_max
    assert len(set(delays)) > 100  # replicas do not restart in lockstep


def test_seeded_random_is_reproducible():
    first = decide_restart(POLICY, success=False, uptime=0.0, failures=3, rng=random.Random(42))
    second = decide_restart(POLICY, success=False, uptime=0.0, failures=3, rng=random.Random(42))
    assert first == second
