"""Kernel writes that wait for an RCU grace period, done off the master's loop.

Registering a v1 memory cgroup's usage threshold (`cgroup.event_control` with
`memory.usage_in_bytes`) ends in `synchronize_rcu()` in the kernel: the writer sleeps
through a whole grace period. Measured on the 2-core test machine (quiet, kernel 6.18):
11.5 ms a registration, one after the other, so a start of 5,000 instances with a `soft`
limit held the master's loop in uninterruptible sleep for about 50 s (no status answered,
no crash replaced meanwhile). Concurrent waiters share a grace period: 200 registrations
took 2.29 s from one thread and 0.25 s from 16; 500 took 0.20 s from 64.

So each such write runs in one of at most `THREADS` short-lived threads, which do nothing
but the write and hand its outcome back to the loop through `call_soon_threadsafe`; every
decision stays on the loop. A thread ends once the queue is empty. The eventfd a job names
is a duplicate the job owns and closes, so the loop may close its own at any time (the
instance ended) without the number being reused under the write.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Callable

from ..loop import EventLoop

THREADS = 32
Done = Callable[[OSError | None], None]


class GraceWrites:
    """A queue of (control file, eventfd, target, args) registrations, written by a few threads."""

    def __init__(self, loop: EventLoop, threads: int = THREADS):
        self.loop = loop
        self.limit = threads
        self.jobs: collections.deque[tuple[str, int, str, str, Done]] = collections.deque()
        self.lock = threading.Lock()
        self.running = 0
        self.closed = False

    def register(self, control: str, efd: int, target: str, args: str, done: Done) -> None:
        """Write `"{efd} {fd of target} {args}"` to `control` off the loop; `done(error)` runs on
        the loop afterwards (error None on success). Called on the loop."""
        own = os.dup(efd)  # the job's own reference to the eventfd (see the module docstring)
        os.set_inheritable(own, False)
        with self.lock:
            self.jobs.append((control, own, target, args, done))
            start = self.running < self.limit and not self.closed
            if start:
                self.running += 1
        if start:
            threading.Thread(target=self._work, name="orch-grace-write", daemon=True).start()

    def pending(self) -> int:
        with self.lock:
            return len(self.jobs)

    def _work(self) -> None:
        while True:
            with self.lock:
                if not self.jobs or self.closed:
                    self.running -= 1
                    return
                control, efd, target, args, done = self.jobs.popleft()
            error = None
            try:
                write_registration(control, efd, target, args)
            except OSError as exc:
                error = exc
            finally:
                os.close(efd)
            self.loop.call_soon_threadsafe(lambda done=done, error=error: done(error))

    def close(self) -> None:
        """The master is exiting: drop what was not written (the cgroups are swept)."""
        with self.lock:
            self.closed = True
            dropped, self.jobs = list(self.jobs), collections.deque()
        for job in dropped:
            os.close(job[1])


def write_registration(control: str, efd: int, target: str, args: str) -> None:
    """One `cgroup.event_control` registration of `efd` for `target` (blocking)."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with open(control, "w") as f:
            f.write(f"{efd} {fd} {args}".strip())
    finally:
        os.close(fd)
