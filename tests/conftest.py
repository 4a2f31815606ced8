"""Shared helpers: real masters under tmp_path, polled conditions, and no process left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest
from hypothesis import settings as hypothesis_settings

# Property tests are deterministic by default (CI): a fixed seed, no example database, so a
# run fails or passes the same way every time. HYPOTHESIS_PROFILE=deep explores: random
# examples, EXAMPLES_SCALE times as many (each failure it finds becomes a plain test).
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("deep", derandomize=False, database=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
EXAMPLES_SCALE = 20 if os.environ.get("HYPOTHESIS_PROFILE") == "deep" else 1


def examples(count: int) -> int:
    """How many examples a property test runs: `count` in CI, more with the deep profile."""
    return count * EXAMPLES_SCALE

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def text_of(path: Path) -> str:
    """A log's text; "" before the instance has printed anything (log files open on first output)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def orch(*args: str, cwd: Path | None = None, timeout: float = 30, env: dict | None = None,
         **kw: Any) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, timeout=timeout,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def alive(pid: int) -> bool:
    """True for a running process; a zombie counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Master:
    """A real `orch up` in the background, driven through its control socket."""

    def __init__(self, folder: Path, config: Path, proc: subprocess.Popen, stderr: Path):
        self.folder = folder
        self.config = config
        self.proc = proc
        self.stderr_path = stderr
        self.seen: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @staticmethod
    def folder_of(config: Path) -> Path:
        """Where a config's master keeps its files by default: .orch/STEM/ beside it."""
        return config.parent / ".orch" / config.stem

    @property
    def socket(self) -> Path:
        return self.folder_of(self.config) / "orch.sock"

    @property
    def pidfile(self) -> Path:
        return self.folder_of(self.config) / "orch.pid"

    @property
    def log_dir(self) -> Path:
        return self.folder_of(self.config) / "logs"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def call(self, cmd: str, **args: Any) -> Any:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.socket))
            sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            reply = json.loads(sock.makefile("rb").readline())
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def status(self) -> dict[str, dict]:
        rows = {row["name"]: row for row in self.call("status")["instances"]}
        self.seen.update(r["pid"] for r in rows.values() if r["pid"])
        return rows

    def pids(self) -> dict[str, int | None]:
        return {name: row["pid"] for name, row in self.status().items()}

    def wait_running(self, count: int, timeout: float = 10.0) -> dict[str, int]:
        def ready() -> dict[str, int] | None:
            rows = self.status()
            running = {n: r["pid"] for n, r in rows.items() if r["state"] == "running"}
            return running if len(running) == count and len(rows) == count else None
        return wait_for(ready, timeout, message=f"{count} running instances")

    def descendants(self) -> list[psutil.Process]:
        try:
            procs = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen.update(p.pid for p in procs)
        return procs

    def write(self, text: str, *, rename: bool = True) -> None:
        """Save the config like an editor: write a temp file and rename it over, or rewrite in place."""
        text = textwrap.dedent(text)
        if rename:
            tmp = self.config.with_name("." + self.config.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.config)
        else:
            with open(self.config, "r+") as f:
                f.truncate(0)
                f.write(text)

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def spawner_of(master) -> psutil.Process:
    return next(p for p in psutil.Process(master.pid).children() if "spawner" in " ".join(p.cmdline()))


def guard_of(master) -> psutil.Process | None:
    for proc in spawner_of(master).children():
        try:
            if "orchestrator.spawn.guard" in " ".join(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            pass
    return None


def kill_master_spawner_and_guard(master) -> None:
    """What only the OOM killer does: master, spawner and guard gone at once, nobody left to
    clean up. The spawner is stopped first, or it would start a new guard."""
    spawner, guard = spawner_of(master), guard_of(master)
    spawner.suspend()
    guard.kill()
    os.killpg(master.pid, signal.SIGKILL)


@pytest.fixture
def start_master(tmp_path: Path):
    """Factory: start_master(config_text) -> Master, running and answering on its socket."""
    masters: list[Master] = []

    def start(text: str, name: str = "workers.toml", args: tuple[str, ...] = ("--quiet",),
              wait: bool = True, pass_fds: tuple[int, ...] = ()) -> Master:
        config = tmp_path / name
        config.write_text(textwrap.dedent(text))
        stderr = tmp_path / f"master-{len(masters)}.err"
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-c", str(config), *args],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(stderr, "wb"),
                                start_new_session=True, pass_fds=pass_fds)
        master = Master(tmp_path, config, proc, stderr)
        masters.append(master)
        if wait:
            def answering() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"master exited with {proc.returncode}:\n{master.stderr()}")
                try:
                    master.call("ping")
                    return True
                except (OSError, RuntimeError):
                    return False
            wait_for(answering, 10, message="the master to answer")
        return master

    yield start
    for master in masters:
        leftovers = master.descendants()
        if master.proc.poll() is None:
            master.proc.kill()
            master.proc.wait(10)
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        for pid in master.seen:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


from servers import beanstalkd_server, redis_server  # noqa: E402,F401 - fixtures for every test module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the longest tests first in every worker's chunk (tests/schedule.py)."""
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    if workers > 1:
        from schedule import cost, deal
        items[:] = deal(items, [cost(item.name, item.get_closest_marker("slow") is not None) for item in items],
                        workers)


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the package and bench/ once, before any worker starts (as pip does for
    a regular install; an editable one compiles nothing). With PYTHONDONTWRITEBYTECODE set,
    as on CI, every master and CLI the suite starts otherwise compiled each module it
    imports from source: 0.66 s of CPU per master import instead of 0.28 s, thousands of times."""
    if hasattr(config, "workerinput"):
        return
    import compileall
    root = Path(__file__).resolve().parents[1]
    for folder in ("orchestrator", "bench"):
        compileall.compile_dir(str(root / folder), quiet=2)
