"""Notify messages that arrive before the master knows the sender's pid are not lost."""

from __future__ import annotations

import subprocess
import time

from orchestrator.config.load import load_config
from orchestrator.expand.render import expand
from orchestrator.supervise.events import EventBus
from orchestrator.supervise.instance import Instance
from orchestrator.supervise.limits import Limits
from orchestrator.observe.logs import LogFile
from orchestrator.loop import EventLoop
from orchestrator.supervise.states import State


class Fleet:
    """Just the supervisor state Limits reads: instances by pid and the event bus."""

    def __init__(self) -> None:
        self.instances: dict = {}
        self.by_pid: dict = {}
        self.events = EventBus()
        self.ready: list = []

    def mark_ready(self, inst: Instance) -> None:
        self.ready.append(inst.name)


def test_messages_sent_before_the_spawn_is_acknowledged_are_replayed(tmp_path):
    (tmp_path / "workers.toml").write_text('[workers.w]\ncommand = "sleep 1"\ntimeout = "30s"\n')
    spec = expand(load_config(tmp_path / "workers.toml"))[0]
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    loop = EventLoop()
    try:
        fleet = Fleet()
        limits = Limits(fleet, loop, check_interval=1.0)
        inst = Instance(spec, LogFile(tmp_path / "w.log", 0, 0), None, fleet.events.emit)
        inst.state = State.STARTING
        # The worker speaks first ...
        limits.on_notify(child.pid, {"READY": "1", "STATUS": "warming"})
        limits.on_notify(child.pid, {"ORCH_BEGIN": "1"})
        assert inst.notify_status is None and not fleet.ready
        # ... then the spawner's "spawned" arrives and the instance gets its pid.
        inst.pid, inst.started_at = child.pid, time.monotonic()
        fleet.by_pid[child.pid] = inst
        inst.set_state(State.RUNNING)
        assert inst.notify_status == "warming" and fleet.ready == ["w"]
        assert "request" in inst.limit_timers, "the timeout clock runs"
    finally:
        loop.close()
        child.kill()
        child.wait()
