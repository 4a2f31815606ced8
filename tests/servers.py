"""Real servers for the tests: redis-server and beanstalkd on a free loopback port, in a
temp folder, always stopped. A missing program fails the test with a clear message (the
README's test command installs it); it is never a skip."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{name} is not installed: run the README's test command (scripts/test-deps "
                    f"installs it from Debian's packages)", pytrace=False)
    return path


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 10.0,
               ready=lambda sock: True) -> None:
    """Wait until the server accepts on `port` and `ready(connected socket)` says it serves:
    a redis-server listens before it has replayed its append-only file, and answers LOADING
    until then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if ready(sock):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"server on port {port} did not answer within {timeout}s")


class Server:
    """One real server process; `stop()` is idempotent, `kill()` simulates a crash."""

    def __init__(self, argv: list[str], port: int, folder: Path, name: str):
        self.argv, self.port, self.folder, self.name = argv, port, folder, name
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, cwd=self.folder, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, self.log, ready=self.ready)

    def ready(self, sock: socket.socket) -> bool:
        return True

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Redis(Server):
    def __init__(self, folder: Path, appendonly: bool = False):
        port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        argv = [_program("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(folder), "--save", "", "--appendonly", "yes" if appendonly else "no",
                "--appendfsync", "always" if appendonly else "everysec", "--daemonize", "no"]
        super().__init__(argv, port, folder, "redis")

    def ready(self, sock: socket.socket) -> bool:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")  # "-LOADING ..." while the AOF replays

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class Beanstalkd(Server):
    def __init__(self, folder: Path):
        port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        argv = [_program("beanstalkd"), "-l", "127.0.0.1", "-p", str(port), "-b", str(folder)]
        super().__init__(argv, port, folder, "beanstalkd")

    @property
    def url(self) -> str:
        return f"beanstalk://127.0.0.1:{self.port}"


@pytest.fixture
def redis_server(tmp_path: Path):
    """A fresh redis-server for one test (appendonly, so a kill and restart loses nothing)."""
    server = Redis(tmp_path / "redis", appendonly=True)
    yield server
    server.stop()


@pytest.fixture
def beanstalkd_server(tmp_path: Path):
    server = Beanstalkd(tmp_path / "beanstalkd")
    yield server
    server.stop()
