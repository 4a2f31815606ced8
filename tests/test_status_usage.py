"""`orch status`'s usage read for every instance in one loop (`TreeSampler.usages`) is what
the general `usage` reads leader by leader, for every kind of tree: a lone process, a
leader with children, a multi-threaded leader, a leader with orphans attributed to it,
a leader that is gone and one whose files were not kept open."""

from __future__ import annotations

import subprocess
import sys

from conftest import wait_for
from orchestrator.procfs import TreeSampler

THREADS = ("import threading, time\n"
           "for _ in range(2): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
           "print('ready', flush=True)\n"
           "time.sleep(60)\n")


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return f.read().split()


def test_usages_reads_what_usage_reads_for_every_kind_of_tree():
    procs: list[subprocess.Popen] = []
    sampler = TreeSampler()
    try:
        def start(argv: list[str], **kw) -> subprocess.Popen:
            procs.append(subprocess.Popen(argv, **kw))
            return procs[-1]
        lone = start(["sleep", "60"])
        parent = start(["sh", "-c", "sleep 60 & sleep 61 & wait"])
        threaded = start([sys.executable, "-c", THREADS], stdout=subprocess.PIPE)
        orphan = start(["sleep", "62"])
        untracked = start(["sleep", "63"])  # its files are opened by the read itself, as `usage` does
        gone = start(["sleep", "64"])  # ends after its files are kept open
        assert threaded.stdout.readline() == b"ready\n"
        wait_for(lambda: len(_children(parent.pid)) == 2, 5, message="the shell's two sleeps")
        for proc in (lone, parent, threaded, orphan, gone):
            sampler.track(proc.pid)
        assert gone.pid in sampler._fds
        gone.kill()
        gone.wait(5)
        adopted = {lone.pid: (orphan.pid,)}
        pids = [lone.pid, parent.pid, threaded.pid, untracked.pid, gone.pid]

        def orphans(pid: int) -> tuple[int, ...]:
            return adopted.get(pid, ())
        fast = sampler.usages(pids, orphans)
        general = [sampler.usage(pid, orphans(pid)) for pid in pids]
        assert fast == general, (fast, general)
        counts = [count for _, _, count in fast]
        assert counts == [2, 3, 1, 1, 0], counts  # lone + orphan, sh + 2 sleeps, threads are one process
        assert all(size > 0 for size, _, count in fast if count), fast
        assert gone.pid not in sampler._fds  # forgotten, as `usage` forgets it
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
        sampler.close()
