"""circus 0.19: one [watcher:NAME] per instance; reload = circusctl reloadconfig."""

from __future__ import annotations

from pathlib import Path

from ..fleet import Fleet
from .base import Tool, python_module

# circus reaps and respawns from a periodic check, not on SIGCHLD: its period is the
# comparable knob to orch's check_interval and supervisord's 1 s poll timeout.
CHECK_DELAY = 1.0

WATCHER = """
[watcher:{name}]
cmd={command}
numprocesses=1
warmup_delay=0
respawn=true
graceful_timeout=10
stdout_stream.class=FileStream
stdout_stream.filename={logdir}/{name}.log
stderr_stream.class=FileStream
stderr_stream.filename={logdir}/{name}.log
"""


class Circus(Tool):
    """circusd in the foreground, controlled over ZeroMQ ipc:// sockets."""

    name = "circus"
    module = "circus"
    distribution = "circus"

    def settings(self) -> str:
        return (f"one [watcher:x] per instance (numprocesses=1); warmup_delay=0, respawn=true, "
                f"graceful_timeout=10, stdout+stderr to a per-instance FileStream; "
                f"check_delay={CHECK_DELAY:g}s, statsd off, ipc:// endpoints")

    @property
    def config_path(self) -> Path:
        return self.workdir / "circus.ini"

    def _endpoint(self) -> str:
        return f"ipc://{self.workdir}/endpoint"

    def render_config(self, fleet: Fleet) -> str:
        (self.workdir / "logs").mkdir(exist_ok=True)
        head = f"""\
[circus]
endpoint={self._endpoint()}
pubsub_endpoint=ipc://{self.workdir}/pubsub
stats_endpoint=ipc://{self.workdir}/stats
statsd=false
check_delay={CHECK_DELAY:g}
warmup_delay=0
logoutput={self.workdir}/circusd.log
loglevel=info
"""
        watchers = []
        for inst in fleet.instances:
            watchers.append(WATCHER.format(name=inst.name, command=" ".join(inst.argv),
                                           logdir=self.workdir / "logs"))
        return head + "".join(watchers)

    def daemon_argv(self) -> list[str]:
        return python_module("circus.circusd", str(self.config_path))

    def _ctl(self, *args: str) -> list[str]:
        return python_module("circus.circusctl", "--endpoint", self._endpoint(), "--timeout", "120", *args)

    def reload_commands(self) -> list[list[str]]:
        return [self._ctl("reloadconfig")]

    def status_argv(self) -> list[str]:
        return self._ctl("status")
