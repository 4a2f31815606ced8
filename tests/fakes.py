"""A fake clock and a fake spawner: the supervisor, rollouts and limits replayed in
milliseconds, with every exit, signal and second chosen by the test (after honcho's
FakeClock tests). Only the clock and the spawner are fake; the supervisor, loop, limits
and plans are the real ones."""

from __future__ import annotations

import signal
import socket
import textwrap
from pathlib import Path
from typing import Any

from orchestrator.config.load import load_config
from orchestrator.expand.render import expand
from orchestrator.expand.spec import ProcessSpec
from orchestrator.loop import EventLoop
from orchestrator.plan import reconcile
from orchestrator.supervise.limits import Limits
from orchestrator.supervise.supervisor import Supervisor


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSpawner:
    """Records spawn requests and signals; the test decides when children start and exit."""

    pid = 0

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._events: list[tuple[Any, ...]] = []
        self.pending: list[Any] = []           # spawn requests not yet acknowledged
        self.signals: list[tuple[int, int, bool]] = []
        self._next_pid = 40000

    def fileno(self) -> int:
        return self._r.fileno()

    def send_sockets(self, sockets: list[Any]) -> None:
        pass

    def close_sockets(self, keys: list[str]) -> None:
        pass

    def spawn(self, requests: list[Any], outputs: list[int]) -> list[tuple[int, str]]:
        self.pending += requests
        return []

    def signal(self, orders: list[tuple[int, int, bool]]) -> None:
        self.signals += orders

    def receive(self) -> list[tuple[Any, ...]]:
        try:
            self._r.recv(4096)
        except BlockingIOError:
            pass
        events, self._events = self._events, []
        return events

    def push(self, event: tuple[Any, ...]) -> None:
        self._events.append(event)
        self._w.send(b"x")

    def close(self) -> None:
        self._r.close()
        self._w.close()


class Replay:
    """A supervisor on a fake clock and spawner, with helpers to move time and processes."""

    def __init__(self, tmp_path: Path, config: str):
        self.tmp_path = tmp_path
        self.clock = FakeClock()
        self.loop = EventLoop(self.clock)
        self.spawner = FakeSpawner()
        self.supervisor = Supervisor(self.loop, self.spawner, tmp_path / "logs")  # type: ignore[arg-type]
        self.limits = Limits(self.supervisor, self.loop, check_interval=1.0)
        self.pids: dict[str, int] = {}
        self.apply(config)

    def specs(self, config: str) -> list[ProcessSpec]:
        path = self.tmp_path / "workers.toml"
        path.write_text(textwrap.dedent(config))
        return expand(load_config(path))

    def apply(self, config: str) -> None:
        self.supervisor.apply(reconcile(self.specs(config), self.supervisor.running_view()))
        self.turn()

    def turn(self) -> None:
        """Let the loop handle what is due now (queued spawns, events, timers)."""
        for _ in range(3):
            self.loop.run_once(0)

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move the clock forward, running timers as they come due."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + step)
            self.turn()

    def ack(self) -> dict[str, int]:
        """The spawner starts every pending request; returns {name: pid}."""
        started = []
        for request in self.spawner.pending:
            self.spawner._next_pid += 1
            started.append((request.token, self.spawner._next_pid))
            self.pids[request.env["ORCH_INSTANCE"]] = self.spawner._next_pid
        self.spawner.pending = []
        if started:
            self.spawner.push(("spawned", started))
        self.turn()
        return {name: pid for name, pid in self.pids.items() if pid in {p for _, p in started}}

    def exit(self, name: str, code: int = 1, signum: int | None = None) -> None:
        status = signum if signum is not None else code << 8
        self.spawner.push(("exited", [(self.pids[name], status)]))
        self.turn()

    def state(self, name: str) -> str:
        return self.supervisor.instances[name].state.value

    def signals_to(self, name: str) -> list[str]:
        pid = self.pids[name]
        return [signal.Signals(s).name for p, s, _ in self.spawner.signals if p == pid]

    def close(self) -> None:
        for inst in self.supervisor.instances.values():
            inst.logfile.close()
        self.loop.close()
        self.spawner.close()
