"""Master settings apply on save (issue 30): metrics, control_socket, pidfile, log_dir, name,
max_instances and log_level change on a running master without restarting any instance; a
bind that fails keeps the old endpoint and says why, naming the key. Real masters."""

from __future__ import annotations

import fcntl
import json
import socket
import urllib.request

import psutil
import pytest

from conftest import guard_of, orch, spawner_of, text_of, wait_for
from servers import free_port

pytestmark = pytest.mark.slow  # real masters and their children

CONFIG = """
    [orchestrator]
    name = "{name}"
    metrics = "127.0.0.1:{port}"
    control_socket = "{sock}"
    pidfile = "{pid}"
    log_dir = "{logs}"
    max_instances = {most}
    log_level = "{level}"
    watch = false
    [workers.tick]
    command = ["sh", "-c", "while true; do echo tick; sleep 0.05; done"]
    replicas = 2
"""


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def _reload(master) -> str:
    result = orch("reload", "-c", str(master.config))
    assert result.returncode == 0, result.stderr
    return result.stdout


def _call(path, cmd: str) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, "args": {}}).encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())["result"]


def test_every_master_setting_applies_live_and_restarts_nothing(start_master, tmp_path):
    first, second = free_port(), free_port()
    old = dict(name="before", port=first, sock=".orch/workers/orch.sock", pid=".orch/workers/orch.pid",
               logs=".orch/workers/logs", most=100, level="info")
    master = start_master(CONFIG.format(**old))
    pids = master.wait_running(2)
    assert "orch_instances 2" in _scrape(first)

    new = dict(name="after", port=second, sock="run/ctl.sock", pid="run/pid/orch.pid", logs="logs2",
               most=3, level="debug")
    master.config.write_text(CONFIG.format(**new))
    out = _reload(master)
    for key, before, after in (("metrics", f"127.0.0.1:{first}", f"127.0.0.1:{second}"), ("name", "before", "after"),
                               ("max_instances", "100", "3"), ("log_level", "info", "debug")):
        assert f"orchestrator.{key}: {before} -> {after}" in out, out
    for key in ("control_socket", "pidfile", "log_dir"):
        assert f"orchestrator.{key}: " in out and "not applied" not in out, out

    # Metrics moved: answers on the new port only.
    assert "orch_instances 2" in _scrape(second)
    assert _refused(first)
    # The control socket moved: the old path is gone, the client with the new config reaches it.
    assert not master.socket.exists()
    assert _call(tmp_path / "run" / "ctl.sock", "ping")["pid"] == master.pid
    status = orch("status", "--json", "-c", str(master.config))
    assert status.returncode == 0 and len(json.loads(status.stdout)) == 2, status
    # The pidfile moved under its lock, and the state file with it.
    assert (tmp_path / "run/pid/orch.pid").read_text().strip() == str(master.pid)
    assert not master.pidfile.exists()
    wait_for(lambda: (tmp_path / "run/pid/orch.pid.state").exists(), message="the state file beside the new pidfile")
    wait_for(lambda: (guard := guard_of(master)) is not None
             and str(tmp_path / "run/pid/orch.pid.state") in " ".join(guard.cmdline()),
             message="the spawner's guard reading the moved state file")
    # Logs continue in the new folder; the name is in the title and the status.
    wait_for(lambda: "tick" in text_of(tmp_path / "logs2" / "tick.log"), message="the log in the new folder")
    assert _call(tmp_path / "run" / "ctl.sock", "status")["name"] == "after"
    assert "orch: master after" in " ".join(psutil.Process(master.pid).cmdline())
    wait_for(lambda: "orch: spawner after" in " ".join(spawner_of(master).cmdline()), message="the spawner renamed")
    # Nothing restarted.
    assert {r["name"]: r["pid"] for r in _call(tmp_path / "run" / "ctl.sock", "status")["instances"]} == pids
    assert all(r["restarts"] == 0 for r in _call(tmp_path / "run" / "ctl.sock", "status")["instances"])

    # max_instances applies: a config over it is refused, and nothing changes.
    master.config.write_text(CONFIG.format(**new).replace("replicas = 2", "replicas = 4"))
    refused = orch("reload", "-c", str(master.config))
    assert refused.returncode == 2 and "more than 3 instances" in refused.stderr, refused


def test_a_failed_bind_or_lock_keeps_the_old_one_and_names_the_key(start_master):
    first = free_port()
    settings = dict(name="m", port=first, sock=".orch/workers/orch.sock", pid=".orch/workers/orch.pid",
                    logs=".orch/workers/logs", most=100, level="info")
    master = start_master(CONFIG.format(**settings))
    pids = master.wait_running(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        master.config.write_text(CONFIG.format(**{**settings, "port": busy}))
        out = _reload(master)
        assert f"orchestrator.metrics: not applied, cannot listen on 127.0.0.1:{busy}" in out, out
        assert f"still 127.0.0.1:{first}" in out, out
        assert "orch_instances 2" in _scrape(first)
    # The next reload tries again, and now the port is free.
    out = _reload(master)
    assert f"orchestrator.metrics: 127.0.0.1:{first} -> 127.0.0.1:{busy}" in out, out
    assert "orch_instances 2" in _scrape(busy)
    # No metrics at all: the endpoint closes; the same port again: it opens.
    master.config.write_text(CONFIG.format(**{**settings, "port": busy}).replace(f'metrics = "127.0.0.1:{busy}"', ""))
    assert f"orchestrator.metrics: 127.0.0.1:{busy} -> None" in _reload(master)
    assert _refused(busy)
    master.config.write_text(CONFIG.format(**{**settings, "port": busy}))
    assert f"orchestrator.metrics: None -> 127.0.0.1:{busy}" in _reload(master)
    assert "orch_instances 2" in _scrape(busy)
    # Another host on the same port: the old endpoint closes first, the new one takes the port.
    master.config.write_text(CONFIG.format(**{**settings, "port": busy}).replace("127.0.0.1:", "localhost:"))
    assert f"orchestrator.metrics: 127.0.0.1:{busy} -> localhost:{busy}" in _reload(master)
    assert "orch_instances 2" in _scrape(busy)
    # A pidfile another master holds locked: refused, the old one stays (with its lock).
    other = master.folder / "other.pid"
    with open(other, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242\n")
        held.flush()
        master.config.write_text(CONFIG.format(**{**settings, "port": busy, "pid": "other.pid"}))
        out = _reload(master)
    assert "orchestrator.pidfile: not applied, another orch master (pid 4242) is already running" in out, out
    assert master.pidfile.read_text().strip() == str(master.pid)
    assert master.pids() == pids


def test_a_setting_that_still_needs_a_restart_says_so_by_key(start_master):
    from orchestrator.config.keys import SETTINGS_KEYS, Kind
    samples = {"cgroup": '"off"', "http": f'"127.0.0.1:{free_port()}"', "http_token_file": '"token"'}
    restart_only = [k.name for k in SETTINGS_KEYS if k.kind is Kind.RESTART]
    assert set(restart_only) <= set(samples), f"give {set(restart_only) - set(samples)} a sample value here"
    if not restart_only:
        return  # every [orchestrator] setting applies live
    text = """
        [orchestrator]
        watch = false
        {extra}
        [workers.w]
        command = "sleep 1000"
    """
    master = start_master(text.format(extra=""))
    pids = master.wait_running(1)
    master.config.write_text(text.format(extra="\n".join(f"{k} = {samples[k]}" for k in restart_only)))
    out = _reload(master)
    for key in restart_only:
        assert f"orchestrator.{key}: not applied, it needs a restart of the master" in out, out
    assert master.pids() == pids
