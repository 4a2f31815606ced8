"""The machine's floor: no supervisor, just the system calls any supervisor must make.

As a daemon (`python -m bench.tools.floor FLEET.json`) it posix_spawns every instance
(each in its own process group, like the tools do), then sits in a bare blocking
waitpid() loop that respawns whatever exits; SIGTERM sends SIGTERM to every child, reaps
them all and exits. It has no config reload and no status.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from ..fleet import Fleet
from .base import Tool, python_module


class Floor(Tool):
    """The floor, driven like a tool so the same scenarios measure it."""

    name = "floor"
    module = "bench"
    distribution = ""

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
        return python_module("bench.tools.floor", str(self.config_path))


class _Stop(Exception):
    pass


def _spawn(argv: list[str]) -> int:
    # own process group like the tools' children; empty signal mask (ours blocks SIGTERM here)
    return os.posix_spawn(argv[0], argv, os.environ, setpgroup=0, setsigmask=())


def serve(path: str) -> int:
    """The floor daemon's main loop."""
    fleet: dict[str, list[str]] = json.loads(Path(path).read_text())

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    term = {signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, term)  # SIGTERM only while waiting: no child untracked
    children = {_spawn(argv): name for name, argv in fleet.items()}
    try:
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


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
