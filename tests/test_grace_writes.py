"""Usage thresholds registered off the master's loop (supervise/grace_writes.py): each
registration waits for an RCU grace period in the kernel, so a start of thousands of limited
instances used to hold the loop in uninterruptible sleep for about 11 ms each. Real v1 memory
cgroups, a real EventLoop and a real process that crosses the threshold."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from conftest import wait_for
from orchestrator.loop import EventLoop
from orchestrator.spawn import cgroups
from orchestrator.supervise.grace_writes import GraceWrites

COUNT = 48


@pytest.fixture
def groups():
    layout = cgroups.detect()
    if layout.memory is None or not os.access(layout.memory, os.W_OK):
        pytest.fail(f"this test needs the v1 memory controller, writable (as root): {layout}")
    home = os.path.join(layout.memory, f"orch-grace-test-{os.getpid()}")
    paths = [os.path.join(home, f"g{i}") for i in range(COUNT)]
    os.makedirs(home)
    for path in paths:
        os.mkdir(path)
    try:
        yield paths
    finally:
        cgroups.sweep([home], 10.0)
        assert not os.path.exists(home), f"left behind: {home}"


def run_until(loop: EventLoop, condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        loop.run_once(0.01)


def test_thresholds_are_registered_by_threads_while_the_loop_runs(groups):
    loop = EventLoop()
    writes = GraceWrites(loop)
    ticks: list[int] = []
    outcomes: dict[int, OSError | None] = {}

    def tick() -> None:
        ticks.append(len(outcomes))
        if len(outcomes) < COUNT:
            loop.call_later(0.001, tick)

    efds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in groups]
    loop.call_soon(tick)
    for i, (path, efd) in enumerate(zip(groups, efds)):
        writes.register(os.path.join(path, "cgroup.event_control"), efd,
                        os.path.join(path, "memory.usage_in_bytes"), str(4 << 20),
                        lambda error, i=i: outcomes.__setitem__(i, error))
    assert not outcomes, "register() returns before the write: answers come through the loop"
    run_until(loop, lambda: len(outcomes) == COUNT, 30, f"registrations answered: {len(outcomes)}")
    assert all(error is None for error in outcomes.values()), outcomes
    # each write waits for a grace period: the loop ran its 1 ms timer meanwhile
    assert any(0 < done < COUNT for done in ticks), f"the loop never ran between answers: {ticks[:20]}"
    wait_for(lambda: writes.running == 0, 5, message="the writing threads end with the queue")

    # the registration is real: a process in the group that grows past 4 MiB wakes its eventfd
    grower = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdin.readline(); "
                               "b = bytearray(32 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(60)"],
                              stdin=subprocess.PIPE)
    try:
        with open(os.path.join(groups[7], "cgroup.procs"), "w") as f:
            f.write(str(grower.pid))
        grower.stdin.write(b"go\n")
        grower.stdin.flush()
        ready, _, _ = select.select([efds[7]], [], [], 10)
        assert ready == [efds[7]], "the threshold never fired"
        assert os.eventfd_read(efds[7]) >= 1
        for other in (efds[6], efds[8]):
            with pytest.raises(BlockingIOError):
                os.eventfd_read(other)
    finally:
        grower.kill()
        grower.wait()
        for efd in efds:
            os.close(efd)
        loop.close()


def test_the_loop_may_close_its_eventfd_before_the_write(groups):
    """The instance ended (its eventfd closed) while its registration waited in the queue: the
    job's own duplicate keeps the number valid, so the write neither fails nor lands on a
    newer eventfd that took the same number."""
    loop = EventLoop()
    writes = GraceWrites(loop, threads=1)
    outcomes: list[OSError | None] = []
    for path in groups[:6]:
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        writes.register(os.path.join(path, "cgroup.event_control"), efd,
                        os.path.join(path, "memory.usage_in_bytes"), str(1 << 20), outcomes.append)
        os.close(efd)
    run_until(loop, lambda: len(outcomes) == 6, 30, f"answers: {outcomes}")
    assert outcomes == [None] * 6
    fds = set(os.listdir("/proc/self/fd"))
    writes.close()
    assert set(os.listdir("/proc/self/fd")) == fds, "no duplicate is left open"
    loop.close()


def test_close_drops_what_was_not_written(groups):
    loop = EventLoop()
    writes = GraceWrites(loop, threads=1)
    before = len(os.listdir("/proc/self/fd"))
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    outcomes: list[OSError | None] = []
    for path in groups:
        writes.register(os.path.join(path, "cgroup.event_control"), efd,
                        os.path.join(path, "memory.usage_in_bytes"), str(1 << 20), outcomes.append)
    writes.close()
    os.close(efd)
    wait_for(lambda: writes.running == 0, 10, message="the thread ends after close")
    assert writes.pending() == 0 and len(os.listdir("/proc/self/fd")) == before
    assert len(outcomes) == 0  # answers for written jobs wait on a loop that no longer runs
    loop.close()
