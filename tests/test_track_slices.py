"""The master opens new main processes' /proc files after a start in slices, giving the loop
back between them (issue 31: a crash landing after a start of 5,000 waited for 10,000 opens)."""

from __future__ import annotations

from orchestrator.procfs import TRACK_GAP, TRACK_QUIET, TRACK_SLICE, TreeSampler


def test_files_of_a_big_start_are_opened_a_slice_per_turn_and_every_live_one_is():
    sampler = TreeSampler()
    opened: list[list[int]] = []
    sampler.track = lambda pid: opened[-1].append(pid)  # what one callback opens (no files here)
    timers: list[tuple[float, object]] = []
    count = 2 * TRACK_SLICE + 17
    for pid in range(1000, 1000 + count):
        sampler.track_later(pid, lambda delay, fn: timers.append((delay, fn)), lambda pid: pid != 1003)
    assert [delay for delay, _ in timers] == [TRACK_QUIET]  # one timer for the whole burst
    sampler._last_pending -= TRACK_QUIET  # the burst is over
    while timers:
        delay, fn = timers.pop(0)
        opened.append([])
        fn()
        assert len(opened[-1]) <= TRACK_SLICE
        assert not timers or timers[0][0] == TRACK_GAP
    assert len(opened) == 3
    assert sorted(pid for turn in opened for pid in turn) == [p for p in range(1000, 1000 + count) if p != 1003]
