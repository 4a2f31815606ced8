"""Memory sampling gives the loop back between slices of the fleet (issue 31: crash
replacement p99 at 5,000 instances)."""

from __future__ import annotations

from fakes import Replay


def test_a_memory_sampling_round_holds_the_loop_for_one_slice_at_a_time(tmp_path):
    """At 5,000 instances with memory limits one round in one callback held the loop for
    tens of ms, and a crash's exit landing then waited; a round now goes in slices."""
    from orchestrator.supervise.limits import SAMPLE_SLICE, SLICE_GAP
    count = 2 * SAMPLE_SLICE + 7
    r = Replay(tmp_path, f"""
        [workers.w]
        command = "prog"
        replicas = {count}
        memory = {{ hard = "1GiB" }}
    """)
    r.spawner.orphans = lambda pid: ()  # the real spawner's: no orphan attributed to any instance
    try:
        r.ack()
        r.limits.ensure_sampling()
        start = r.limits.sampled
        r.clock.now += 1.0  # the round is due
        turns = []
        for _ in range(6):
            before = r.limits.sampled
            r.loop.run_once(0)
            r.clock.now += SLICE_GAP
            turns.append(r.limits.sampled - before)
        assert max(turns) <= SAMPLE_SLICE, f"one loop turn sampled {max(turns)} instances"
        assert r.limits.sampled - start == count, f"the round sampled {r.limits.sampled - start} of {count}"
        assert r.limits._sampler is not None, "the next round is armed"
    finally:
        r.close()
