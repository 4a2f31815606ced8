"""The interface every adapter implements, and the process handling they share."""

from __future__ import annotations

import compileall
import functools
import importlib.metadata
import importlib.util
import os
import resource
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from pathlib import Path

from ..fleet import Fleet
from ..procfs import kill_all

REPO_ROOT = Path(__file__).resolve().parents[2]
CTL_TIMEOUT = 120.0


class Unsupported(Exception):
    """The tool has no equivalent of this operation (recorded as n/a with the message)."""


def atomic_write(path: Path, text: str) -> None:
    """Write a temp file next to `path` and os.replace() it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _raise_fd_limit() -> None:
    """In the daemon before exec: the same open-files limit for every tool."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Tool(ABC):
    """One supervisor under test. Lifecycle: write_config, start, ..., stop or kill."""

    name: str = ""
    module: str = ""        # the importable module whose absence makes the tool missing
    distribution: str = ""  # for the version
    python_targets = False  # runs Python worker classes (`target`), not only commands

    def __init__(self) -> None:
        self.workdir = Path()
        self.proc: subprocess.Popen[bytes] | None = None
        self.fleet: Fleet | None = None

    # -- what each adapter provides -------------------------------------------------------
    @abstractmethod
    def settings(self) -> str:
        """The settings used, for the report."""

    @abstractmethod
    def render_config(self, fleet: Fleet) -> str:
        """The config file text for this fleet."""

    @property
    @abstractmethod
    def config_path(self) -> Path:
        """Where the config file lives (inside the workdir)."""

    @abstractmethod
    def daemon_argv(self) -> list[str]:
        """The foreground daemon command."""

    def reload_commands(self) -> list[list[str]]:
        """Commands run after saving the config to apply it (none: the tool watches the file)."""
        raise Unsupported(f"{self.name} has no config reload")

    def status_argv(self) -> list[str]:
        """One full status query."""
        raise Unsupported(f"{self.name} has no status command")

    status_ok_codes: tuple[int, ...] = (0,)

    # -- shared ---------------------------------------------------------------------------
    def missing(self) -> str | None:
        """Why the tool cannot run here, or None."""
        if importlib.util.find_spec(self.module) is None:
            return f"python module {self.module!r} not installed (pip install -r bench/requirements.txt)"
        return None

    def version(self) -> str:
        return package_version(self.distribution) or "unknown"

    def setup(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        byte_compile(self.module)

    def write_config(self, fleet: Fleet) -> None:
        if not self.python_targets and any(inst.target is not None for inst in fleet.instances):
            raise Unsupported("Python worker targets are orch-only")
        self.fleet = fleet
        atomic_write(self.config_path, self.render_config(fleet))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return env

    def start(self) -> int:
        """Launch the daemon in its own session; returns its PID."""
        log = open(self.workdir / f"{self.name}-daemon.log", "ab")
        with log:
            self.proc = subprocess.Popen(
                self.daemon_argv(), cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_raise_fd_limit)
        return self.proc.pid

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not started"
        return self.proc.pid

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def ctl(self, argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
        """Run a control command; its output, or RuntimeError with the output."""
        done = subprocess.run(argv, cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=CTL_TIMEOUT)
        out = (done.stdout + done.stderr).decode(errors="replace")
        if done.returncode not in ok:
            raise RuntimeError(f"{' '.join(argv[:4])}... exited {done.returncode}: {out.strip()[-300:]}")
        return out

    def apply_reload(self, fleet: Fleet) -> None:
        """Save the new config and apply it the tool's own way."""
        commands = self.reload_commands()  # raises Unsupported before touching the file
        self.write_config(fleet)
        for argv in commands:
            self.ctl(argv)

    def status(self) -> str:
        return self.ctl(self.status_argv(), self.status_ok_codes)

    def stop(self) -> None:
        """SIGTERM to the master (graceful shutdown)."""
        if not self.exited():
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the daemon, its descendants' groups and any fleet process left; reap."""
        if self.proc is None:
            return
        kill_all(None if self.exited() else self.pid, self.fleet.tag if self.fleet else -1)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def daemon_log(self) -> str:
        """The tail of the daemon's output, for error messages."""
        try:
            return (self.workdir / f"{self.name}-daemon.log").read_text(errors="replace")[-400:]
        except OSError:
            return ""


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@functools.cache
def byte_compile(module: str) -> None:
    """Byte-compile a tool's package, as pip does when it installs one. Without it, a
    package run from a checkout (orch here) with PYTHONDONTWRITEBYTECODE set, as this
    sandbox sets it, compiles its modules from source at every CLI call: 20-40 ms of each
    status query that an installed tool never pays."""
    spec = importlib.util.find_spec(module)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        compileall.compile_dir(folder, quiet=2)
