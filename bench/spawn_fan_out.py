"""Threads or processes for a batch of posix_spawn calls? (issue 31, spawn/posix.py)

`python -m bench.spawn_fan_out [--n 2000] [--reps 3]` starts N `/bin/sleep`s in batches of 64,
as the spawner does, three ways, interleaved: one process alone; one process with a second
thread taking every other request of a batch; one process with a forked helper taking every
other request and reporting its pids over a pipe (what spawn/posix.py does). The process
carries 15 MiB of touched memory, about a spawner's RSS, so a fork costs what it would.
Prints the wall time of each way, min and median."""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import threading
import time

BATCH = 64


def _spawn(count: int) -> list[int]:
    return [os.posix_spawn("/bin/sleep", ["/bin/sleep", "1000"], os.environ, setsid=True) for _ in range(count)]


def _threads(count: int) -> list[int]:
    other: list[int] = []
    helper = threading.Thread(target=lambda: other.extend(_spawn(count // 2)))
    helper.start()
    mine = _spawn(count - count // 2)
    helper.join()
    return mine + other


def _forked(count: int) -> list[int]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, " ".join(map(str, _spawn(count // 2))).encode())
        os._exit(0)
    os.close(write_end)
    mine = _spawn(count - count // 2)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return mine + [int(p) for p in data.split()]


WAYS = {"one process": _spawn, "two threads": _threads, "a forked helper": _forked}


def once(n: int, way: str) -> float:
    start, pids = time.perf_counter(), []
    for first in range(0, n, BATCH):
        pids += WAYS[way](min(BATCH, n - first))
    elapsed = time.perf_counter() - start
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # the forked helper's children were reparented (to init, or a subreaper) and reaped there
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    ballast = bytearray(15 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.reps):
        for way in WAYS:
            times[way].append(once(args.n, way))
    print(f"N = {args.n} sleeps in batches of {BATCH}, {args.reps} reps, load {os.getloadavg()[0]:.1f}")
    for way, samples in times.items():
        print(f"  {way:16} min {min(samples):.2f} s  median {statistics.median(samples):.2f} s")


if __name__ == "__main__":
    main()
