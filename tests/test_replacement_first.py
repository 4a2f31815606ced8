"""A crashed instance's replacement leaves for the spawner before the rest of the wake-up's
work (due timers: the state file, log flushes, probes; other fds; soon calls), so that
periodic work cannot sit between a crash and its replacement (issue 31's crash tail)."""

from __future__ import annotations

from fakes import Replay

FLEET = """
[workers.w]
command = "prog"
replicas = 3
"""


def test_the_replacement_is_sent_before_the_timers_due_in_the_same_wake_up(tmp_path):
    r = Replay(tmp_path, FLEET)
    try:
        r.ack()
        assert [r.state(n) for n in ("w", "w-1", "w-2")] == ["running"] * 3
        seen: list[tuple[str, int]] = []
        r.loop.call_later(0, lambda: seen.append(("timer", len(r.spawner.pending))))
        r.spawner.push(("exited", [(r.pids["w-1"], 9)]))  # SIGKILL
        r.loop.run_once(0)  # one wake-up: the spawner's report, then the due timer
        assert seen == [("timer", 1)], "the timer ran before the replacement was sent"
        assert r.spawner.pending[0].env["ORCH_INSTANCE"] == "w-1" and r.state("w-1") == "starting"
        assert r.ack() == {"w-1": r.pids["w-1"]} and r.state("w-1") == "running"
    finally:
        r.close()
