"""supervisord 4.x: one [program:NAME] per instance; reload = supervisorctl reread + update."""

from __future__ import annotations

from pathlib import Path

from ..fleet import Fleet
from .base import Tool, python_module

PROGRAM = """
[program:{name}]
command={command}
startsecs=0
autorestart=true
startretries=1000000
stopsignal=TERM
stopwaitsecs=10
redirect_stderr=true
stdout_logfile={logdir}/{name}.log
"""


class Supervisord(Tool):
    """supervisord in the foreground (nodaemon), controlled over its Unix socket."""

    name = "supervisord"
    module = "supervisor"
    distribution = "supervisor"
    status_ok_codes = (0, 3)  # 3: some program is not RUNNING, still a complete answer

    def settings(self) -> str:
        return ("one [program:x] per instance; startsecs=0, autorestart=true, startretries=1000000, "
                "stopwaitsecs=10, stdout+stderr to a per-instance log file; nodaemon=true, "
                "loglevel=info, control over a Unix socket")

    @property
    def config_path(self) -> Path:
        return self.workdir / "supervisord.conf"

    def render_config(self, fleet: Fleet) -> str:
        (self.workdir / "logs").mkdir(exist_ok=True)
        head = f"""\
[unix_http_server]
file={self.workdir}/supervisor.sock

[supervisord]
nodaemon=true
logfile={self.workdir}/supervisord.log
pidfile={self.workdir}/supervisord.pid
childlogdir={self.workdir}/logs
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.workdir}/supervisor.sock
"""
        programs = []
        for inst in fleet.instances:
            programs.append(PROGRAM.format(name=inst.name, command=" ".join(inst.argv),
                                           logdir=self.workdir / "logs"))
        return head + "".join(programs)

    def daemon_argv(self) -> list[str]:
        return python_module("supervisor.supervisord", "-c", str(self.config_path))

    def _ctl(self, *args: str) -> list[str]:
        return python_module("supervisor.supervisorctl", "-c", str(self.config_path), *args)

    def reload_commands(self) -> list[list[str]]:
        return [self._ctl("reread"), self._ctl("update")]

    def status_argv(self) -> list[str]:
        return self._ctl("status")
