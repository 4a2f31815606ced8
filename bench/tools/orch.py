"""orch: one [workers.NAME] table per instance; reload = save the file (orch watches it)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from ..fleet import Fleet
from .base import Tool, package_version, python_module

HEAD = """\
[orchestrator]
control_socket = ".orch/orch.sock"
pidfile = ".orch/orch.pid"
log_dir = ".orch/logs"
check_interval = "1s"

[defaults]
restart = "always"
backoff = { initial = "1s", max = "60s" }
"""


class Orch(Tool):
    """`orch up --quiet` in the foreground."""

    name = "orch"
    module = "orchestrator"
    distribution = "orch"
    python_targets = True

    def settings(self) -> str:
        return ('one [workers.x] table per instance; restart="always", backoff 1s..60s '
                '(a first crash restarts at once), check_interval=1s, output to per-instance '
                'log files, `up --quiet`; reload: save the file, then SIGHUP (a save alone applies '
                '250 ms later: the window that folds a burst of saves into one reload)')

    def version(self) -> str:
        version = package_version(self.distribution)
        if version is None:
            try:
                from orchestrator import __version__ as version  # run from the repo, not installed
            except ImportError:
                version = "unknown"
        return version

    @property
    def config_path(self) -> Path:
        return self.workdir / "workers.toml"

    memory_limits = False  # a memory limit on every instance (the limits_cpu scenario)

    def render_config(self, fleet: Fleet) -> str:
        head = HEAD.replace("[defaults]\n", '[defaults]\nmemory = { soft = "200MiB", hard = "300MiB" }\n') \
            if self.memory_limits else HEAD
        if fleet.matrix:
            return head + _matrix_table(fleet)
        tables = []
        for inst in fleet.instances:
            if inst.target is not None:
                body = f"target = {json.dumps(inst.target)}\npreload = {str(inst.preload).lower()}\n"
            else:
                body = f"command = {json.dumps(list(inst.argv))}\n"
            tables.append(f"\n[workers.{inst.name}]\n{body}")
        return head + "".join(tables)

    def daemon_argv(self) -> list[str]:
        return python_module("orchestrator", "up", "-c", str(self.config_path), "--quiet")

    def reload_commands(self) -> list[list[str]]:
        return []  # orch also reloads by itself when the file is replaced: see apply_reload

    def apply_reload(self, fleet: Fleet) -> None:
        """Save, then SIGHUP (systemd's `ExecReload=kill -HUP $MAINPID`): applied at once. The
        save alone is applied too, after the 250 ms that fold a burst of saves into one
        reload; the watcher then finds the file already applied and does nothing."""
        self.write_config(fleet)
        os.kill(self.pid, signal.SIGHUP)

    def status_argv(self) -> list[str]:
        return python_module("orchestrator", "status", "-c", str(self.config_path), "--json")

    def cgroup_dirs(self) -> list[str]:
        """The run's cgroup directories (cgroup = "auto"), named by its state file."""
        from orchestrator.spawn import cgroups
        try:
            run = json.loads((self.workdir / ".orch" / "orch.pid.state").read_text())["run"]
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return cgroups.run_paths(cgroups.detect(), run)

    def kill(self) -> None:
        """SIGKILL everything, the guard included: nobody is left to remove the run's cgroups
        (the next master sweeps only dead runs beside its own), so the bench does."""
        dirs = self.cgroup_dirs() if self.proc is not None else []
        super().kill()
        if dirs:
            from orchestrator.spawn import cgroups
            cgroups.sweep(dirs, 5.0)


def _matrix_table(fleet: Fleet) -> str:
    """One template over a matrix of the sleep tokens; the name is `s` + the token's index
    (its last five digits), so an instance keeps its name when a reload edits its token."""
    tokens = ", ".join(json.dumps(inst.token) for inst in fleet.instances)
    return ('\n[workers.s]\nname = "s{{ t[-5:] }}"\ncommand = ["/bin/sleep", "{{ t }}"]\n'
            f"matrix = {{ t = [{tokens}] }}\n")
