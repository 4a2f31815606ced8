"""The machine's floor: no supervisor, just the system calls any supervisor must make.

As a daemon (`python -m bench.tools.floor FLEET.json`) it posix_spawns every instance
(each in its own process group, like the tools do), then sits in a bare blocking
waitpid() loop that respawns whatever exits; SIGTERM sends SIGTERM to every child, reaps
them all and exits. It has no config reload and no status.

With `--sample-memory SECONDS` (the limits_cpu scenario) it is instead the least a
supervisor that enforces memory limits by sampling must do: every SECONDS, one read of each
child's /proc/PID/statm (an fd kept open per child, the resident size parsed and compared
with a limit), and a non-blocking reap of whatever exited. No process tree, no soft limit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from ..fleet import Fleet
from .base import Tool, python_module


class Floor(Tool):
    """The floor, driven like a tool so the same scenarios measure it."""

    name = "floor"
    module = "bench"
    distribution = ""
    memory_limits = False  # sample every child's memory each second (the limits_cpu scenario)

    def settings(self) -> str:
        return ("a minimal Python daemon: os.posix_spawn loop (own process group, output to "
                "/dev/null), blocking waitpid respawn loop, SIGTERM: kill + reap all")

    def version(self) -> str:
        return "-"

    @property
    def config_path(self) -> Path:
        return self.workdir / "floor.json"

    def render_config(self, fleet: Fleet) -> str:
        return json.dumps({inst.name: list(inst.argv) for inst in fleet.instances})

    def daemon_argv(self) -> list[str]:
        extra = ["--sample-memory", str(SAMPLE_EVERY)] if self.memory_limits else []
        return python_module("bench.tools.floor", str(self.config_path), *extra)


SAMPLE_EVERY = 1.0  # seconds, as orch's check_interval in the scenario
LIMIT = 300 * 2**20  # bytes, as the scenario's hard limit for orch


class _Stop(Exception):
    pass


def _spawn(argv: list[str]) -> int:
    # own process group like the tools' children; empty signal mask (ours blocks SIGTERM here)
    return os.posix_spawn(argv[0], argv, os.environ, setpgroup=0, setsigmask=())


def serve(path: str, sample_every: float | None = None) -> int:
    """The floor daemon's main loop."""
    fleet: dict[str, list[str]] = json.loads(Path(path).read_text())

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    term = {signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, term)  # SIGTERM only while waiting: no child untracked
    children = {_spawn(argv): name for name, argv in fleet.items()}
    try:
        if sample_every is not None:
            _sample(fleet, children, sample_every, term)
        while True:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, term)
            pid, _ = os.waitpid(-1, 0)
            signal.pthread_sigmask(signal.SIG_BLOCK, term)
            name = children.pop(pid, None)
            if name is not None:
                children[_spawn(fleet[name])] = name
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        while children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            children.pop(pid, None)
    return 0


def _sample(fleet: dict[str, list[str]], children: dict[int, str], every: float, term: set) -> None:
    """Sample each child's resident size every `every` seconds until SIGTERM (raises _Stop)."""
    limit_pages = LIMIT // os.sysconf("SC_PAGE_SIZE")
    statm = {pid: os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC) for pid in children}
    pread = os.pread
    due = time.monotonic()
    while True:
        while True:  # reap and replace what exited since the last turn
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            os.close(statm.pop(pid))
            name = children.pop(pid)
            new = _spawn(fleet[name])
            children[new] = name
            statm[new] = os.open(f"/proc/{new}/statm", os.O_RDONLY | os.O_CLOEXEC)
        for pid, fd in statm.items():
            if int(pread(fd, 128, 0).split(None, 2)[1]) > limit_pages:
                os.kill(pid, signal.SIGKILL)
        due += every
        signal.pthread_sigmask(signal.SIG_UNBLOCK, term)
        time.sleep(max(0.0, due - time.monotonic()))
        signal.pthread_sigmask(signal.SIG_BLOCK, term)


if __name__ == "__main__":
    args = sys.argv[1:]
    every = None
    if "--sample-memory" in args:
        at = args.index("--sample-memory")
        every = float(args[at + 1])
        del args[at:at + 2]
    sys.exit(serve(args[0], every))
