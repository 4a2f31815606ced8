"""The control plane with real masters: socket permissions, status, start/stop/restart,
exit codes, `down`, `up --detach` and process titles."""

from __future__ import annotations

import errno
import io
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

import psutil

from conftest import Master, alive, orch, text_of, wait_for
from orchestrator import cli as cli_module

PY = sys.executable
IGNORES_TERM = "command = " + json.dumps([PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                          "signal.SIG_IGN); print('up', flush=True); time.sleep(1000)"])


def cli(master, *args: str, **kw) -> subprocess.CompletedProcess:
    return orch(*args, "-c", str(master.config), timeout=kw.pop("timeout", 20), **kw)


def states(master) -> dict[str, str]:
    return {name: row["state"] for name, row in master.status().items()}


# --- the control socket -------------------------------------------------------------------
def as_nobody(work) -> str:
    """Run `work()` in a forked child that became `nobody`; returns its result (or error)."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = str(work())
        except BaseException as exc:  # noqa: BLE001
            result = f"error: {exc!r}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return data.decode(errors="replace")


def raw_client(path: Path) -> str:
    """Connect and see what the master says (a refused client is told at once), else ask."""
    os.stat(path)  # the folder is traversable: a refusal is the socket's own doing
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(path))
    except OSError as exc:
        return f"connect failed: {errno.errorcode.get(exc.errno, exc.errno)}"
    reader = sock.makefile("rb")
    sock.settimeout(1)
    try:
        line = reader.readline()
    except socket.timeout:
        sock.settimeout(5)
        sock.sendall(b'{"cmd": "status"}\n')
        line = reader.readline()
    return "reply: " + line.decode()


def cli_main(config: Path) -> str:
    """`orch status -c config` in this process (the child), its exit code and stderr."""
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        code = cli_module.main(["status", "-c", str(config)])
    finally:
        sys.stderr = old
    return json.dumps({"code": code, "stderr": err.getvalue()})


def nobody_cli(config: Path) -> dict:
    seen = as_nobody(lambda: cli_main(config))
    assert seen.startswith("{"), f"`orch status` as nobody did not end with an exit code: {seen}"
    return json.loads(seen)


def test_control_socket_is_owner_only_and_checks_the_peer_uid(start_master, tmp_path):
    # pytest's tmp folders are 0700: put the socket where `nobody` can reach it, so that only
    # the socket's own mode and the SO_PEERCRED check stand in the way.
    shared = Path(tempfile.mkdtemp(prefix="orch-sock-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        (tmp_path / ".orch").mkdir()
        Master.folder_of(tmp_path / "workers.toml").symlink_to(shared)
        master = start_master("""
            [workers.w]
            command = "sleep 1000"
        """)
        master.wait_running(1)
        path = shared / "orch.sock"
        client_config = shared / "client.toml"  # the same socket, in a file `nobody` can read
        client_config.write_text(f'[orchestrator]\ncontrol_socket = "{path}"\n')
        client_config.chmod(0o644)
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

        seen = as_nobody(lambda: raw_client(path))
        assert seen == "connect failed: EACCES", seen
        cli_run = nobody_cli(client_config)
        assert cli_run["code"] == 1 and "permission denied" in cli_run["stderr"], cli_run

        os.chmod(path, 0o666)
        seen = as_nobody(lambda: raw_client(path))
        assert seen.startswith("reply: ") and "permission denied" in seen, seen
        assert str(master.pid) not in seen, "nothing was served to the other uid"
        for _ in range(3):  # the refusal races the client's request: it must never pass for success
            cli_run = nobody_cli(client_config)
            assert cli_run == {"code": 1, "stderr": "orch: permission denied\n"}, cli_run
        assert "refused a client with uid 65534" in master.stderr()

        result = cli(master, "status", "--json")
        assert result.returncode == 0, result.stderr
        assert [row["name"] for row in json.loads(result.stdout)] == ["w"]
        master.terminate()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --- status --------------------------------------------------------------------------
FLEET = """
[orchestrator]
name = "ctl"
[workers.web]
command = "sleep 1000"
replicas = 2
[workers.job]
command = "sleep 1001"
"""


def test_status_table_json_and_patterns(start_master):
    master = start_master(FLEET)
    pids = master.wait_running(3)
    os.kill(pids["job"], signal.SIGKILL)
    wait_for(lambda: (r := master.status()["job"])["state"] == "running" and r["pid"] != pids["job"],
             message="job to be replaced")
    pids = master.pids()

    result = cli(master, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"config {master.config}" in lines[0] and f"(master {master.pid})" in lines[0]
    when = re.search(r"last applied (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", lines[1])
    assert when, lines[1]
    assert abs((datetime.now() - datetime.strptime(when.group(1), "%Y-%m-%d %H:%M:%S")).total_seconds()) < 60
    header = next(i for i, line in enumerate(lines) if line.startswith("NAME"))
    assert re.split(r"\s{2,}", lines[header]) == ["NAME", "TEMPLATE", "STATE", "PID", "UPTIME", "RESTARTS",
                                                   "LAST EXIT", "RSS", "CPU%", "PROCS"]
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in lines[header + 1:header + 4])}
    assert set(rows) == {"web", "web-1", "job"}
    for name, cells in rows.items():
        assert cells[1] == name.split("-")[0] and cells[2] == "running" and cells[3] == str(pids[name])
        assert re.fullmatch(r"\d+(ms|s)", cells[4]) and re.fullmatch(r"\d+(\.\d)?[BKMG]", cells[7])
        assert re.fullmatch(r"\d+\.\d", cells[8])
    assert rows["job"][5] == "1" and rows["job"][6] == "SIGKILL"
    assert rows["web"][5] == "0" and rows["web"][6] == "-"
    assert lines[-1] == "3 running"

    filtered = cli(master, "status", "web*").stdout
    assert "web" in filtered and "web-1" in filtered and "job " not in filtered

    result = cli(master, "status", "--json", "template:job", "web-1")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list) and [r["name"] for r in rows] == ["job", "web-1"]
    for row in rows:
        assert {"name", "template", "state", "pid", "restarts", "rss", "uptime", "last_exit"} <= set(row)
        assert row["state"] == "running" and row["pid"] == pids[row["name"]]
        assert isinstance(row["rss"], int) and row["rss"] > 0
        assert isinstance(row["uptime"], (int, float)) and row["uptime"] >= 0
    assert rows[0]["template"] == "job" and rows[0]["restarts"] == 1 and rows[0]["last_exit"] == "SIGKILL"
    assert rows[1]["template"] == "web" and rows[1]["restarts"] == 0 and rows[1]["last_exit"] is None

    missing = cli(master, "status", "nope-*")
    assert missing.returncode == 1 and "no instance matches 'nope-*'" in missing.stderr


# --- start / stop / restart --------------------------------------------------------------
PATTERNS = """
[workers.a]
command = "sleep {a}"
replicas = {n}
stop_timeout = "2s"
min_uptime = "1s"  # start and restart wait this long (5 s by default)
[workers.b]
command = "sleep {b}"
stop_timeout = "2s"
min_uptime = "1s"
"""


def test_start_stop_restart_by_name_glob_and_template(start_master):
    master = start_master(PATTERNS.format(a=1000, b=2000, n=2))
    before = master.wait_running(3)

    result = cli(master, "stop", "a")
    assert result.returncode == 0 and result.stdout.strip() == "stop: a", result
    wait_for(lambda: states(master) == {"a": "stopped", "a-1": "running", "b": "running"}, message="a stopped")
    assert not alive(before["a"]) and master.status()["a"]["held"] is True

    result = cli(master, "stop", "a*")
    assert result.returncode == 0 and result.stdout.strip() == "stop: a, a-1"
    wait_for(lambda: states(master) == {"a": "stopped", "a-1": "stopped", "b": "running"}, message="a* stopped")

    result = cli(master, "start", "template:a")
    assert result.returncode == 0 and result.stdout.strip() == "start: a, a-1"
    after = wait_for(lambda: (p := master.pids()) and all(p.values()) and
                     all(s == "running" for s in states(master).values()) and p, message="template:a started")
    assert after["a"] != before["a"] and after["a-1"] != before["a-1"] and after["b"] == before["b"]

    result = cli(master, "restart", "b", "a-1")
    assert result.returncode == 0 and result.stdout.strip() == "restart: b, a-1"
    again = wait_for(lambda: (p := master.pids())["b"] not in (None, after["b"]) and p["a-1"] not in
                     (None, after["a-1"]) and p, message="b and a-1 restarted")
    assert again["a"] == after["a"] and not alive(after["b"]) and not alive(after["a-1"])

    for action in ("start", "stop", "restart"):
        result = cli(master, action, "a", "nothing-*")
        assert result.returncode == 1 and "no instance matches 'nothing-*'" in result.stderr, result
    assert master.pids() == again, "a pattern matching nothing makes the whole command a no-op"


def test_a_stopped_instance_stays_stopped_across_a_reload_until_started(start_master):
    master = start_master(PATTERNS.format(a=1000, b=2000, n=2))
    before = master.wait_running(3)
    assert cli(master, "stop", "b").returncode == 0
    wait_for(lambda: states(master)["b"] == "stopped", message="b stopped")
    # b's command changes and a replica is added: b must not be started by the reload
    master.write(PATTERNS.format(a=1000, b=3000, n=3))
    wait_for(lambda: states(master) == {"a": "running", "a-1": "running", "a-2": "running", "b": "stopped"},
             message="the reload to start a-2 only")
    assert master.call("status")["reloads"] == 1
    assert all(master.pids()[n] == before[n] for n in ("a", "a-1"))
    time.sleep(0.3)  # proving a negative: nothing starts b later
    assert states(master)["b"] == "stopped" and master.pids()["b"] is None
    assert cli(master, "start", "b").returncode == 0
    pid = wait_for(lambda: master.pids()["b"], message="b started")
    assert psutil.Process(pid).cmdline() == ["sleep", "3000"], "started with the reloaded command"


def test_rolling_restart_replaces_every_match_max_unavailable_at_a_time(start_master):
    master = start_master("""
        [workers.roll]
        command = "sleep 1000"
        replicas = 5
        max_unavailable = 2
        min_uptime = "200ms"
        [workers.other]
        command = "sleep 1001"
    """)
    before = master.wait_running(6)
    began = time.monotonic()
    # On the socket, not the CLI: a loaded machine's CLI took longer to start and exit than the
    # first batches took, and the loop below saw only the last one (1 down, never 2).
    assert len(master.call("restart", patterns=["template:roll"], rolling=True)) == 5
    most_down = 0
    while True:
        rows = {n: r for n, r in master.status().items() if n.startswith("roll")}
        # unavailable: not running, or running a new process that is not ready yet (min_uptime)
        down = sum(1 for n, r in rows.items() if r["state"] != "running" or
                   (r["pid"] != before[n] and not r["ready"]))
        most_down = max(most_down, down)
        if all(r["state"] == "running" and r["pid"] not in (None, before[n]) and r["ready"]
               for n, r in rows.items()):
            break
        assert time.monotonic() < began + 10, f"the rolling restart did not finish: {rows}"
        time.sleep(0.005)
    took = time.monotonic() - began
    assert most_down == 2, most_down
    assert took >= 0.6, f"5 instances 2 at a time, each ready after 200ms: 3 batches, not {took:.2f}s"
    assert master.pids()["other"] == before["other"]
    assert not any(alive(pid) for name, pid in before.items() if name.startswith("roll"))
    assert "5 instances, 2 at a time" in master.stderr()
    before = master.pids()
    result = cli(master, "restart", "--rolling", "template:roll")  # waits for every batch
    rows = master.status()
    assert result.returncode == 0 and result.stdout.count("roll") == 5, result
    assert all(rows[n]["pid"] != before[n] and rows[n]["ready"] for n in rows if n.startswith("roll"))


# --- exit codes ----------------------------------------------------------------------
def test_exit_codes(start_master, tmp_path):
    master = start_master("""
        [workers.e]
        command = "sleep 1000"
    """)
    master.wait_running(1)
    assert cli(master, "status").returncode == 0
    assert cli(master, "stop", "missing").returncode == 1
    assert cli(master, "logs", "missing").returncode == 1

    bogus = cli(master, "status", "--bogus")
    assert bogus.returncode == 2 and "unrecognized arguments: --bogus" in bogus.stderr
    assert orch().returncode == 2 and orch("frobnicate").returncode == 2
    assert cli(master, "logs", "-n", "many").returncode == 2

    broken = tmp_path / "broken.toml"
    broken.write_text("[workers.x\n")
    for command in ("check", "up", "status", "stop"):
        args = [command, "x"] if command == "stop" else [command]
        result = orch(*args, "-c", str(broken), timeout=20)
        assert result.returncode == 2 and "TOML syntax error" in result.stderr, (command, result)
    master.write("[workers.e]\ncommand = 'sleep 1000'\nrestart = 'sometimes'\n")
    reload = cli(master, "reload")
    assert reload.returncode == 2 and "workers.e.restart" in reload.stderr

    alone = tmp_path / "alone" / "workers.toml"
    alone.parent.mkdir()
    alone.write_text('[workers.a]\ncommand = "sleep 1"\n')
    for args in (["status"], ["stop", "a"], ["start", "a"], ["restart", "a"], ["reload"], ["down"], ["diff"]):
        result = orch(*args, "-c", str(alone), timeout=20)
        assert result.returncode == 3 and "no orch master is running" in result.stderr, (args, result)


# --- down ---------------------------------------------------------------------------
def test_down_returns_only_when_the_master_and_every_child_are_gone(start_master, tmp_path):
    config = f"""
        [workers.w]
        command = "sleep 1000"
        replicas = 2
        [workers.tree]
        command = "sh -c 'sleep 1000 & sleep 1001 & wait'"
        [workers.stubborn]
        {IGNORES_TERM}
        stop_timeout = "300ms"
    """
    for round_ in range(3):  # the race it guards against is narrow: try it more than once
        master = start_master(config, name=f"workers{round_}.toml")
        master.wait_running(4)
        wait_for(lambda: len([p for p in master.descendants() if p.name() == "sleep"]) == 4,
                 message="the tree's grandchildren")
        wait_for(lambda: "up" in text_of(master.log_dir / "stubborn.log"), message="the signal setup")
        tree = [master.pid] + [p.pid for p in master.descendants()]
        assert len(tree) == 9  # master, spawner, its guard, 4 children, 2 grandchildren
        result = cli(master, "down", timeout=20)
        left = [pid for pid in tree if alive(pid)]
        assert result.returncode == 0, result.stderr
        assert left == [], f"round {round_}: still alive after `orch down` returned: {left}"
        assert f"master {master.pid} and all its instances are gone" in result.stdout
        assert master.proc.wait(5) == 0
        assert not master.socket.exists() and not master.pidfile.exists()


# --- up --detach -----------------------------------------------------------------------
def kill_tree(pid: int | None) -> None:
    if pid is None:
        return
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def test_up_detach_runs_a_daemon_that_down_ends(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text(textwrap.dedent("""
        [workers.d]
        command = "sh -c 'echo hello from $ORCH_INSTANCE; exec sleep 1000'"
        replicas = 2
    """))
    folder = Master.folder_of(config)
    pidfile, log_dir, sock = folder / "orch.pid", folder / "logs", folder / "orch.sock"
    master_pid = None
    tree: list[int] = []
    try:
        result = orch("up", "--detach", "-c", str(config), cwd=tmp_path, timeout=30)
        if pidfile.exists() and pidfile.read_text().strip():
            master_pid = int(pidfile.read_text())
        assert result.returncode == 0, result.stderr
        # it returned once the master listens: the socket answers right away
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(str(sock))
            client.sendall(b'{"cmd": "ping"}\n')
            reply = json.loads(client.makefile("rb").readline())
        master_pid = reply["result"]["pid"]
        assert f"orch master {master_pid} is running in the background" in result.stdout
        assert pidfile.read_text().strip() == str(master_pid)

        master = psutil.Process(master_pid)
        assert os.getsid(master_pid) != os.getsid(0), "the daemon has its own session"
        assert os.getsid(master_pid) != master_pid, "double fork: not a session leader, no tty ever"
        assert master.terminal() is None
        assert os.readlink(f"/proc/{master_pid}/fd/0") == os.devnull
        for fd in (1, 2):
            assert os.readlink(f"/proc/{master_pid}/fd/{fd}") == str(pidfile.parent / "master.log")
        assert master.ppid() != os.getpid()

        rows = wait_for(lambda: (r := json.loads(orch("status", "--json", "-c", str(config)).stdout)) and
                        all(x["state"] == "running" for x in r) and r, message="the detached fleet")
        assert {r["name"] for r in rows} == {"d", "d-1"}
        wait_for(lambda: all(f"hello from {n}" in text_of(log_dir / f"{n}.log") for n in ("d", "d-1")),
                 message="the instances' output")
        wait_for(lambda: "d[" in text_of(pidfile.parent / "master.log"), message="the master's log lines")
        tree = [master_pid] + [p.pid for p in master.children(recursive=True)]
        assert len(tree) == 5  # master, spawner, its guard, 2 instances

        second = orch("up", "--detach", "-c", str(config), cwd=tmp_path, timeout=30)
        assert second.returncode == 1 and "already running" in second.stderr, second
        assert "running in the background" not in second.stdout, "another master's ping is no success"
        assert pidfile.read_text().strip() == str(master_pid)
        assert [p.pid for p in master.children(recursive=True)] == tree[1:]

        down = orch("down", "-c", str(config), timeout=20)
        left = [pid for pid in tree if alive(pid)]
        assert down.returncode == 0, down.stderr
        assert left == []
        assert not pidfile.exists() and not sock.exists()
        assert f"master {master_pid} exited" in (pidfile.parent / "master.log").read_text()
    finally:
        kill_tree(master_pid)
        for pid in tree:
            kill_tree(pid)


def test_up_detach_fails_at_once_when_the_daemon_dies_during_start_up(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "workers.toml"
        config.write_text(f'[orchestrator]\nmetrics = "127.0.0.1:{port}"\nname = "doomed"\n'
                          '[workers.w]\ncommand = "sleep 1000"\n')
        began = time.monotonic()
        result = orch("up", "--detach", "-c", str(config), cwd=tmp_path, timeout=30)
        took = time.monotonic() - began
    assert result.returncode == 1, result
    assert "exited during start-up" in result.stderr and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr and "running in the background" not in result.stdout
    assert took < 5, f"it waited {took:.1f}s for a daemon that was already gone"
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if "doomed" in " ".join(p.info["cmdline"] or [])], message="nothing left running")


# --- process titles ---------------------------------------------------------------------
APP = """
import time
from orchestrator.worker import Worker

class Idle(Worker):
    def run(self):
        time.sleep(0.05)
        return False
"""


def cmdline(pid: int) -> str:
    return " ".join(arg for arg in psutil.Process(pid).cmdline() if arg)  # setproctitle pads with NULs


def test_process_titles_name_master_spawner_and_python_workers(start_master, tmp_path):
    (tmp_path / "app.py").write_text(APP)
    master = start_master("""
        [orchestrator]
        name = "titles"
        [workers.cold]
        target = "app:Idle"
        preload = false
        [workers.warm]
        target = "app:Idle"
        preload = true
        [workers.plain]
        command = "sleep 1000"
    """)
    pids = master.wait_running(3)
    expected = f"orch: master titles [{master.config}]"
    wait_for(lambda: cmdline(master.pid) == expected, message="the master's title")
    ps = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(master.pid)], capture_output=True, text=True, timeout=10)
    assert ps.stdout.strip() == expected
    spawners = [p for p in psutil.Process(master.pid).children() if cmdline(p.pid).startswith("orch: spawner")]
    assert len(spawners) == 1 and cmdline(spawners[0].pid) == "orch: spawner titles"
    for name in ("cold", "warm"):
        wait_for(lambda: cmdline(pids[name]) == f"orch: {name}", message=f"the title of {name}")
    assert psutil.Process(pids["plain"]).cmdline() == ["sleep", "1000"]
