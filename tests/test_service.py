"""The master as a service: systemd's notify protocol, the Prometheus endpoint, and the
real supervisord running configs/supervisord.conf."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from conftest import ROOT, alive, orch, wait_for

PY = sys.executable


# --- systemd notify -------------------------------------------------------------------------
class NotifyListener:
    """The service manager's end: a datagram socket collecting sd_notify messages."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def next(self, predicate, timeout: float = 5.0, message: str = "a notify message") -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {message}; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            self.messages.append(data)
            if predicate(data):
                return data

    def close(self) -> None:
        self.sock.close()


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


APP = """
import time
from orchestrator.worker import Worker

class Idle(Worker):
    def run(self):
        time.sleep(0.05)
        return False
"""


def test_sd_notify_ready_after_every_start_then_status_then_stopping(start_master, tmp_path, monkeypatch):
    (tmp_path / "app.py").write_text(APP)
    listener = NotifyListener(tmp_path / "systemd.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "systemd.sock"))
    try:
        master = start_master("""
            [workers.s]
            command = "sleep 1000"
            replicas = 4
            [workers.py]
            target = "app:Idle"
            replicas = 2
            preload = true
        """, wait=False)
        ready = listener.next(lambda m: "READY=1" in m, 10, "READY=1")
        rows = master.status()  # right after READY=1: everything was started already
        assert len(rows) == 6 and all(r["state"] == "running" and r["pid"] for r in rows.values()), rows
        assert listener.messages == [ready], "READY=1 is the first message"
        assert fields(ready) == {"READY": "1", "MAINPID": str(master.pid), "STATUS": "6 running"}

        assert orch("stop", "s", "-c", str(master.config), timeout=20).returncode == 0
        listener.next(lambda m: fields(m).get("STATUS") == "5 running, 1 stopped" or
                      fields(m).get("STATUS") == "1 stopped, 5 running", 5, "STATUS= after the stop")
        assert not any("READY=1" in m for m in listener.messages[1:])

        master.proc.send_signal(signal.SIGTERM)
        listener.next(lambda m: "STOPPING=1" in m, 5, "STOPPING=1")
        assert master.proc.wait(10) == 0
    finally:
        listener.close()


# --- metrics ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head, body


def samples(body: str) -> dict[str, float]:
    found = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


METRICS = """
[orchestrator]
metrics = "127.0.0.1:{port}"
[workers.m]
command = "sleep 1000"
replicas = {n}
"""


def test_metrics_endpoint_reports_instances_and_reloads(start_master):
    port = free_port()
    master = start_master(METRICS.format(port=port, n=2))
    pids = master.wait_running(2)
    head, body = scrape(port)
    assert head.startswith("HTTP/1.0 200") and "text/plain; version=0.0.4" in head
    found = samples(body)
    for name in ("m", "m-1"):
        labels = f'{{name="{name}",template="m"}}'
        assert found[f"orch_instance_up{labels}"] == 1
        assert found[f"orch_instance_restarts_total{labels}"] == 0
        assert found[f"orch_instance_rss_bytes{labels}"] > 0
    assert found["orch_reloads_total"] == 0
    assert "# TYPE orch_instance_restarts_total counter" in body and "# TYPE orch_instance_up gauge" in body

    idle = socket.create_connection(("127.0.0.1", port), timeout=5)  # a scraper that says nothing
    try:
        os.kill(pids["m"], signal.SIGKILL)
        wait_for(lambda: master.status()["m"]["pid"] not in (None, pids["m"]), message="m replaced")
        master.write(METRICS.format(port=port, n=3))
        master.wait_running(3)
        assert orch("stop", "m-1", "-c", str(master.config), timeout=20).returncode == 0
        wait_for(lambda: master.status()["m-1"]["state"] == "stopped", message="m-1 stopped")
        found = samples(scrape(port)[1])
    finally:
        idle.close()
    assert found['orch_instance_restarts_total{name="m",template="m"}'] == 1
    assert found['orch_instance_up{name="m-1",template="m"}'] == 0
    assert found['orch_instance_rss_bytes{name="m-1",template="m"}'] == 0
    assert found['orch_instance_up{name="m-2",template="m"}'] == 1
    assert found["orch_reloads_total"] == 1


def test_metrics_on_ipv6_and_on_a_taken_port(start_master, tmp_path):
    port = free_port()
    master = start_master(f"""
        [orchestrator]
        metrics = "[::1]:{port}"
        [workers.v6]
        command = "sleep 1000"
    """)
    master.wait_running(1)
    with socket.create_connection(("::1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b'orch_instance_up{name="v6",template="v6"} 1' in data

    other = tmp_path / "o" / "workers.toml"  # short: xdist's folders lengthen tmp_path
    other.parent.mkdir()
    other.write_text(f'[orchestrator]\nmetrics = "[::1]:{port}"\nname = "clash"\n'
                     '[workers.w]\ncommand = "sleep 1000"\n')
    result = orch("up", "-c", str(other), timeout=20)
    assert result.returncode == 1, result
    assert f"orch: orchestrator.metrics: cannot listen on [::1]:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if "clash" in " ".join(p.info["cmdline"] or [])], message="no spawner left")


# --- supervisord ------------------------------------------------------------------------------
def tree_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def fleet_pids(config: Path, env: dict) -> dict[str, int] | None:
    result = orch("status", "--json", "-c", str(config), env=env, timeout=10)
    if result.returncode != 0:
        return None
    rows = json.loads(result.stdout)
    if len(rows) == 4 and all(r["state"] == "running" and r["pid"] for r in rows):
        return {r["name"]: r["pid"] for r in rows}
    return None


def test_supervisord_runs_stops_and_starts_the_whole_fleet(tmp_path):
    orch_bin = Path(sys.executable).parent / "orch"
    if not orch_bin.exists():
        orch_bin = Path(shutil.which("orch") or "orch")
    supervisord = Path(sys.executable).parent / "supervisord"
    supervisorctl = Path(sys.executable).parent / "supervisorctl"
    assert supervisord.exists() and supervisorctl.exists(), "pip install supervisor"
    conf = ROOT / "configs" / "supervisord.conf"
    run = tmp_path / "run"
    run.mkdir()
    config = tmp_path / "workers.toml"
    config.write_text(textwrap.dedent("""
        [orchestrator]
        graceful_timeout = "5s"
        [workers.sleeper]
        command = "sleep 1000"
        replicas = 3
        [workers.tree]
        command = "sh -c 'sleep 1001 & wait'"
    """))
    env = {**os.environ, "ORCH_BIN": str(orch_bin), "ORCH_CONFIG": str(config), "ORCH_RUN": str(run)}

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(supervisorctl), "-c", str(conf), *args], env=env, capture_output=True,
                              text=True, timeout=40)

    proc = subprocess.Popen([str(supervisord), "-c", str(conf), "-n"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen: set[int] = set()
    try:
        first = wait_for(lambda: fleet_pids(config, env), 15, interval=0.1, message="the fleet under supervisord")
        wait_for(lambda: any(p.name() == "sleep" and p.cmdline()[1:] == ["1001"] for p in tree_of(proc.pid)),
                 message="the tree's grandchild")
        before = tree_of(proc.pid)
        seen.update(p.pid for p in before)
        master = next(p for p in before if p.ppid() == proc.pid)
        assert " ".join(a for a in master.cmdline() if a).startswith("orch: master")
        assert len(before) == 8  # master, spawner, its guard, 4 instances, 1 grandchild
        assert set(first.values()) <= {p.pid for p in before}

        stopped = ctl("stop", "orch")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped
        left = [p.pid for p in before if alive(p.pid)]
        assert left == [], f"left behind after `supervisorctl stop orch`: {left}"
        assert "STOPPED" in ctl("status", "orch").stdout

        started = ctl("start", "orch")
        assert started.returncode == 0 and "started" in started.stdout, started
        again = wait_for(lambda: fleet_pids(config, env), 15, interval=0.1, message="the fleet back")
        seen.update(p.pid for p in tree_of(proc.pid))
        assert set(again) == set(first) and not set(again.values()) & set(first.values())
        assert "RUNNING" in ctl("status", "orch").stdout
    finally:
        seen.update(p.pid for p in tree_of(proc.pid))
        if proc.poll() is None:
            ctl("shutdown")
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in seen:
            for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass
