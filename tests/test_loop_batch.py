"""The loop's batch of ready fds (loop.py): a reader that an earlier callback of the same
batch removed never runs, even when its fd number already belongs to a new pipe (it read
and closed another owner's fd: a master under churn lost control connections that way)."""

from __future__ import annotations

import os

from orchestrator.loop import EventLoop


def test_a_reader_removed_earlier_in_the_batch_does_not_run_even_when_its_fd_is_reused():
    loop = EventLoop()
    first, second = os.pipe2(os.O_NONBLOCK), os.pipe2(os.O_NONBLOCK)
    ran: list[int] = []
    reused: list[tuple[int, int]] = []

    def reader(mine: tuple[int, int], other: tuple[int, int]) -> None:
        ran.append(mine[0])
        loop.remove_reader(other[0])  # what pipes.py does when an instance's exit drains it
        try:
            os.close(other[0])
        except OSError:  # the stale run: it was closed already
            pass
        reused.append(os.pipe2(os.O_NONBLOCK))  # its number is free: the next pipe takes it
        try:
            os.read(mine[0], 10)
        except BlockingIOError:  # the stale run reads the new owner's empty pipe
            pass
    try:
        os.write(first[1], b"x")
        os.write(second[1], b"y")
        loop.add_reader(first[0], lambda: reader(first, second))
        loop.add_reader(second[0], lambda: reader(second, first))
        loop.run_once(1.0)
        assert len(ran) == 1, f"both readers ran in one batch: {ran}"
        assert reused[0][0] in (first[0], second[0]), "the test must reuse the closed number"
        os.fstat(reused[0][0])  # the new owner's fd is still open: nobody closed it
    finally:
        loop.close()
        for fd in {first[0], first[1], second[0], second[1], *[fd for pair in reused for fd in pair]}:
            try:
                os.close(fd)
            except OSError:
                pass
