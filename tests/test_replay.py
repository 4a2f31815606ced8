"""The supervisor replayed on a fake clock and a fake spawner: backoff sequences, rolling
batches, stop escalation and limit recycling, second by second, in milliseconds."""

from __future__ import annotations

import signal

import pytest

from fakes import Replay

CRASHER = """
[workers.w]
command = "prog"
backoff = { initial = "1s", max = "8s" }
min_uptime = "5s"
"""


@pytest.fixture
def replay(tmp_path):
    made: list[Replay] = []

    def make(config: str) -> Replay:
        made.append(Replay(tmp_path, config))
        return made[-1]
    yield make
    for r in made:
        r.close()


def _time_to_restart(r: Replay, name: str, limit: float = 30.0) -> float:
    """Seconds (on the fake clock) until the instance is spawned again."""
    began = r.clock.now
    while r.state(name) != "starting":
        r.advance(0.05)
        assert r.clock.now - began < limit, f"{name} never restarted"
    return r.clock.now - began


def test_backoff_doubles_to_the_max_then_crash_loops_and_resets_after_min_uptime(replay):
    r = replay(CRASHER)
    r.ack()
    assert r.state("w") == "running"
    r.advance(0.1)
    r.exit("w")
    assert r.state("w") == "starting", "a first crash restarts at once"
    delays = []
    for _ in range(5):
        r.ack()
        r.advance(0.1)
        r.exit("w")
        assert r.state("w") in ("backoff", "crash-looping")
        delays.append((r.state("w"), _time_to_restart(r, "w")))
    expected = [1, 2, 4, 8, 8]
    for (state, delay), want in zip(delays, expected):
        assert want * 0.85 <= delay <= want * 1.15, (delays, expected)
    assert [s for s, _ in delays] == ["backoff", "backoff", "backoff", "crash-looping", "crash-looping"]
    # A run longer than min_uptime resets the count: the next crash restarts at once.
    r.ack()
    r.advance(6)
    r.exit("w")
    assert r.state("w") == "starting"
    assert r.supervisor.instances["w"].restarts == 7


def test_stop_escalates_to_sigkill_exactly_at_stop_timeout(replay):
    r = replay('[workers.w]\ncommand = "prog"\nstop_signal = "INT"\nstop_timeout = "3s"\n')
    r.ack()
    r.supervisor.stop(r.supervisor.instances["w"])
    r.turn()
    assert r.signals_to("w") == ["SIGINT"]
    r.advance(2.9)
    assert r.signals_to("w") == ["SIGINT"], "no SIGKILL before stop_timeout"
    r.advance(0.2)
    assert r.signals_to("w") == ["SIGINT", "SIGKILL"]
    assert all(group for _, _, group in r.spawner.signals), "signals go to the whole process group"
    r.exit("w", signum=signal.SIGKILL)
    assert r.state("w") == "stopped"


def test_a_process_that_stops_in_time_gets_no_sigkill(replay):
    r = replay('[workers.w]\ncommand = "prog"\nstop_timeout = "3s"\n')
    r.ack()
    r.supervisor.stop(r.supervisor.instances["w"])
    r.advance(1)
    r.exit("w", code=0)
    r.advance(5)
    assert r.signals_to("w") == ["SIGTERM"]
    assert r.state("w") == "stopped"


ROLLING = """
[workers.web]
command = "{cmd}"
replicas = 5
rolling = true
max_unavailable = 2
min_uptime = "2s"
"""


def test_rolling_restart_goes_in_batches_each_ready_before_the_next(replay):
    r = replay(ROLLING.format(cmd="v1"))
    first = r.ack()
    assert len(first) == 5
    r.apply(ROLLING.format(cmd="v2"))
    stopping = [n for n in first if r.state(n) == "stopping"]
    assert len(stopping) == 2, "max_unavailable = 2 at a time"
    seen_batches = []
    while stopping:
        seen_batches.append(sorted(stopping))
        for name in stopping:
            r.exit(name, code=0)
        assert all(r.state(n) == "starting" for n in stopping)
        r.ack()
        r.advance(1.0)  # up, but not yet for min_uptime: not ready
        assert not [n for n in first if r.state(n) == "stopping" and n not in stopping]
        r.advance(1.2)  # ready: the next batch stops
        stopping = [n for n in first if r.state(n) == "stopping"]
        assert len(stopping) <= 2
    assert [len(b) for b in seen_batches] == [2, 2, 1]
    assert all(r.supervisor.instances[n].spec.argv == ("v2",) for n in first)
    assert r.supervisor.pending_ops == 0, "the rollout finished and released the reload queue"


def test_rolling_restart_halts_when_a_new_process_dies_before_ready(replay):
    r = replay(ROLLING.format(cmd="v1"))
    first = r.ack()
    r.apply(ROLLING.format(cmd="v2"))
    batch = [n for n in first if r.state(n) == "stopping"]
    for name in batch:
        r.exit(name, code=0)
    r.ack()
    r.exit(batch[0], code=1)  # dies before min_uptime
    r.advance(10)
    untouched = [n for n in first if n not in batch]
    assert all(r.supervisor.instances[n].spec.argv == ("v1",) for n in untouched), "halted: the rest keep v1"
    assert r.supervisor.pending_ops == 0


def test_max_lifetime_recycles_within_the_jitter_window_without_backoff(replay):
    r = replay('[workers.w]\ncommand = "prog"\nmax_lifetime = "100s"\n')
    r.ack()
    r.advance(89.5)
    assert r.state("w") == "running", "never more than 10% early"
    r.advance(10.6)
    assert r.state("w") == "stopping"
    assert r.supervisor.instances["w"].last_reason == "max_lifetime"
    r.exit("w", code=0)
    assert r.state("w") == "starting", "a limit recycle restarts at once"


def test_timeout_kills_a_hung_request_and_max_requests_recycles(replay):
    r = replay('[workers.w]\ncommand = "prog"\ntimeout = "5s"\nmax_requests = 3\n')
    r.ack()
    pid = r.pids["w"]
    for _ in range(2):
        r.limits.on_notify(pid, {"ORCH_BEGIN": "1"})
        r.advance(1)
        r.limits.on_notify(pid, {"ORCH_END": "1"})
    assert r.state("w") == "running"
    r.limits.on_notify(pid, {"ORCH_BEGIN": "1"})
    r.advance(4.9)
    assert r.state("w") == "running"
    r.advance(0.2)
    assert r.state("w") == "stopping" and r.signals_to("w") == ["SIGKILL"], "a hung request is SIGKILLed"
    r.exit("w", signum=signal.SIGKILL)
    r.ack()
    pid = r.pids["w"]
    for _ in range(3):
        r.limits.on_notify(pid, {"ORCH_BEGIN": "1"})
        r.limits.on_notify(pid, {"ORCH_END": "1"})
    r.turn()
    assert r.state("w") == "stopping" and r.signals_to("w") == ["SIGTERM"]
    assert r.supervisor.instances["w"].last_reason == "max_requests"


def test_state_changes_arrive_as_events_in_order(replay):
    r = replay(CRASHER)
    seen = []
    r.supervisor.events.subscribe(lambda e: seen.append((e.old.value, e.new.value))
                                  if hasattr(e, "old") else None)
    r.ack()
    r.exit("w")
    r.ack()
    r.supervisor.stop(r.supervisor.instances["w"])
    r.exit("w", code=0)
    assert seen == [("starting", "running"), ("running", "starting"), ("starting", "running"),
                    ("running", "stopping"), ("stopping", "stopped")]
