"""`orch upgrade` (and SIGUSR2): the master re-executes itself, same pid, into the orch its
environment has now, and carries every instance on: real masters, real exec, a copy of the
package with another version first on PYTHONPATH, `wrk` against the held socket."""

from __future__ import annotations

import compileall
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, alive, orch, text_of, wait_for
from loadgen import Wrk
from orchestrator.handover.state import VERSION, HandoverError, migrate, missing_names
from test_sockets import free_port

PY = sys.executable
TICKER = '''
import itertools, signal, sys, time

def seen(signum, frame):
    print("SIGNAL", signum, flush=True)
    if signum == signal.SIGTERM:
        sys.exit(0)

for s in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM,
          signal.SIGALRM, signal.SIGCONT, signal.SIGWINCH, signal.SIGPIPE):
    signal.signal(s, seen)
for i in itertools.count():
    print(i, flush=True)
    time.sleep(0.005)
'''


PRELOADED = '''
import time
from orchestrator.worker import Worker


class Tick(Worker):
    def run(self):
        time.sleep(0.05)
        return False
'''


# --- the record's format (pure) -----------------------------------------------------------------
def _record(version: int = VERSION, **extra) -> dict:
    return {"version": version, "orch": "0.1.0", "config": "/x/workers.toml", "quiet": True, "master": {},
            "spawner": {}, "fds": {}, "pipes": [], "reply": None,
            "instances": [{"name": "a", "state": "running"}], **extra}


@pytest.mark.parametrize("record, error", [
    (_record(VERSION + 1), "newer than this orch"),
    (_record(0), "unknown format"),
    ([], "not an orch master's record"),
    ({"version": "2"}, "not an orch master's record"),
    ({k: v for k, v in _record().items() if k != "fds"}, "has no 'fds'"),
    (_record(instances=[{"name": "a", "state": "starting"}]), "cannot take over"),
])
def test_a_record_that_cannot_be_taken_over_is_refused(record, error):
    with pytest.raises(HandoverError, match=error):
        migrate(record)


def test_an_older_record_is_upgraded():
    old = _record(1)
    assert "deadlines" not in old["instances"][0]
    new = migrate(old)
    assert new["version"] == VERSION and new["instances"][0]["deadlines"] == {}
    assert missing_names(new, ["b"]) == ["a"] and missing_names(new, ["a"]) == []


# --- real masters --------------------------------------------------------------------------------
def package_copy(tmp_path: Path, version: str | None = None) -> Path:
    """A copy of the orchestrator package under tmp_path/tree (put first on PYTHONPATH)."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "orchestrator", tree / "orchestrator", ignore=shutil.ignore_patterns("__pycache__"))
    # Byte-compiled as pip does at install: the proof and the exec then load .pyc files
    # instead of compiling 150 modules each (PYTHONDONTWRITEBYTECODE is set here): ~1.5 s
    # less per upgrade; a changed file (set_version) is still compiled from source.
    compileall.compile_dir(str(tree / "orchestrator"), quiet=1)
    if version:
        set_version(tree, version)
    return tree


def set_version(tree: Path, version: str) -> None:
    init = tree / "orchestrator" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))


def numbers(path: Path) -> list[int]:
    """The numbered lines of a ticker's log (a last line still being written left out)."""
    text = path.read_text()
    lines = text.split("\n")[:-1]  # complete lines only
    bad = [line for line in lines if not line.isdigit()]
    assert not bad, f"{path.name}: unexpected lines {bad[:5]}"
    return [int(line) for line in lines]


def assert_every_line_once(path: Path) -> int:
    found = numbers(path)
    assert found == list(range(len(found))), f"{path.name}: lines lost or doubled around " \
        f"{next((i for i, n in enumerate(found) if n != i), None)}"
    return len(found)


def fleet(master) -> dict[str, tuple[int, int]]:
    return {name: (row["pid"], row["restarts"]) for name, row in master.status().items()}


def ticker_config(tmp_path: Path, replicas: int = 2, extra: str = "") -> str:
    (tmp_path / "ticker.py").write_text(TICKER)
    return f"""
        [orchestrator]
        watch = false
        {extra}

        [workers.ticker]
        command = "{PY} -u {tmp_path / 'ticker.py'}"
        replicas = {replicas}
        stop_timeout = 2
        min_uptime = 0.2
        """


@pytest.mark.slow
def test_upgrade_under_wrk_keeps_every_child_and_every_line(start_master, tmp_path, monkeypatch):
    tree = package_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tree))
    port = free_port()
    (tmp_path / "prew.py").write_text(PRELOADED)
    master = start_master(ticker_config(tmp_path) + f"""
        [workers.pre]
        target = "prew:Tick"
        preload = true
        min_uptime = 0.2

        [sockets.web]
        bind = "127.0.0.1:{port}"
        backlog = 512

        [workers.web]
        command = "{PY} -m orchestrator.demo.web --fd {{{{ sockets.web.fd }}}}"
        sockets = ["web"]
        replicas = 4
        """)
    master.wait_running(7)
    before, status, asked = fleet(master), master.call("status"), time.monotonic()
    journal = master.call("events")["events"]
    assert status["versions"]["master"] == "0.1.0" and status["pid"] == master.pid
    set_version(tree, "9.9.9")  # what `pip install -U` would have done
    with Wrk(f"http://127.0.0.1:{port}/", seconds=90, connections=8) as wrk:
        time.sleep(1)  # wrk is connected and busy before the upgrade starts
        result = orch("upgrade", "-c", str(master.config), timeout=60)
        assert result.returncode == 0, result.stderr
        assert "now runs orch 9.9.9 (was 0.1.0)" in result.stdout
        assert wrk.proc.poll() is None, "the upgrade outlasted the load: nothing was proven under load"
        after, answered = master.call("status"), time.monotonic()
        time.sleep(0.5)  # and a little load on the new master
        wrk.proc.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        wrk.assert_clean()
    assert after["pid"] == master.pid and alive(master.pid)
    assert after["versions"] == {**after["versions"], "master": "9.9.9", "spawner": "0.1.0", "previous": "0.1.0",
                                 "upgrades": 1}
    assert fleet(master) == before, "a child was restarted"
    kept = master.call("events")["events"]
    assert kept[:len(journal)] == journal, "the journal (orch events) did not carry over"
    assert not [e for e in kept[len(journal):] if e["kind"] == "started"], "the upgrade was journaled as starts"
    rows_before = {r["name"]: r for r in status["instances"]}
    elapsed = after["started"] - status["started"]
    assert elapsed == 0, "the master's start time changed"
    for row in after["instances"]:
        grown = row["uptime"] - rows_before[row["name"]]["uptime"]
        assert abs(grown - (answered - asked)) < 1.0, f"{row['name']}: uptime went from " \
            f"{rows_before[row['name']]['uptime']} to {row['uptime']} in {answered - asked:.1f}s"
    # the tickers go on printing into the same files: every line exactly once, no signal seen
    logs = [master.log_dir / "ticker.log", master.log_dir / "ticker-1.log"]
    counts = [assert_every_line_once(log) for log in logs]
    wait_for(lambda: all(len(numbers(log)) > count + 100 for log, count in zip(logs, counts)), 10,
             message="the tickers' lines after the upgrade")
    for log in logs:
        assert_every_line_once(log)
    assert "took over 7 instances from orch 0.1.0" in master.stderr()
    text = orch("status", "-c", str(master.config)).stdout
    assert "orch 9.9.9 (spawner and zygotes: orch 0.1.0 until replaced), upgraded in place 1x" in text, text
    # the old spawner and its zygote start new processes for the new master
    old_pre = before["pre"][0]
    restarted = orch("restart", "pre", "-c", str(master.config))
    assert restarted.returncode == 0, restarted.stderr
    assert master.status()["pre"]["pid"] not in (None, old_pre) and master.status()["pre"]["state"] == "running"
    assert master.terminate() == 0


@pytest.mark.slow
@pytest.mark.timeout(600)  # 20 proofs and execs: about 40 s on an idle machine, minutes on a loaded one
def test_twenty_upgrades_keep_the_masters_fds_and_memory_flat(start_master, tmp_path, monkeypatch):
    tree = package_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tree))
    # an exec probe always running or about to: the upgrade cancels it at exec, never waits on it
    master = start_master(ticker_config(tmp_path, replicas=1) + """
        [workers.probed]
        command = "sleep 600"
        probes = { liveness = { exec = ["sh", "-c", "echo x >> probed.txt; sleep 0.05"], period = "0.1s", timeout = "20s" } }
        """)
    master.wait_running(2)
    before = fleet(master)
    samples = []
    for round in range(1, 21):  # by SIGUSR2: no CLI to start 20 times over
        set_version(tree, f"1.0.{round}")
        os.kill(master.pid, signal.SIGUSR2)
        wait_for(lambda: f"(upgrade {round})" in master.stderr(), 60, 0.05, f"upgrade {round}")
        assert master.call("status")["versions"]["master"] == f"1.0.{round}"
        proc = psutil.Process(master.pid)
        # A status connection or an exec probe's socket may be open at any one instant: a
        # leak is an fd that never goes away, so each round waits (briefly) for the count
        # to come back down to the first round's, and records what it settled at.
        settle = time.monotonic() + 5
        while samples and proc.num_fds() > samples[0][0] and time.monotonic() < settle:
            time.sleep(0.02)
        samples.append((proc.num_fds(), proc.memory_info().rss))
    assert fleet(master) == before
    probed = len((tmp_path / "probed.txt").read_text())
    wait_for(lambda: len((tmp_path / "probed.txt").read_text()) > probed + 10, 10,
             message="the exec probe to run again after the last upgrade")
    fds = [n for n, _ in samples]
    rss = [r for _, r in samples]
    assert max(fds[1:]) <= fds[0], f"fds grew over 20 upgrades: {fds}"
    assert max(rss[1:]) < rss[0] + 4 * 2**20, f"RSS grew over 20 upgrades: {[r >> 20 for r in rss]} MiB"
    assert_every_line_once(master.log_dir / "ticker.log")
    assert master.terminate() == 0


@pytest.mark.slow
def test_a_tree_that_cannot_take_over_is_refused_and_nothing_changes(start_master, tmp_path, monkeypatch):
    tree = package_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tree))
    master = start_master(ticker_config(tmp_path))
    master.wait_running(2)
    before = fleet(master)

    checked = orch("upgrade", "--check", "-c", str(master.config), timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "can take over from 0.1.0" in checked.stdout

    state = tree / "orchestrator" / "handover" / "state.py"  # an orch that knows an older format only
    state.write_text(state.read_text().replace(f"VERSION = {VERSION}", "VERSION = 1"))
    refused = orch("upgrade", "-c", str(master.config), timeout=60)
    assert refused.returncode == 1 and f"has format {VERSION}, newer than this orch (1)" in refused.stderr, \
        refused.stderr
    state.write_text(state.read_text().replace("VERSION = 1", f"VERSION = {VERSION}"))

    request = tree / "orchestrator" / "spawn" / "request.py"  # even the core an old spawner keeps changed
    request.write_text(request.read_text().replace("PROTOCOL = 1\n", "PROTOCOL = 2\n").replace("CORE = 1\n", "CORE = 2\n"))
    refused = orch("upgrade", "-c", str(master.config), timeout=60)
    assert refused.returncode == 1 and "speaks another protocol" in refused.stderr, refused.stderr
    assert "not even the core" in refused.stderr, refused.stderr
    request.write_text(request.read_text().replace("PROTOCOL = 2\n", "PROTOCOL = 1\n").replace("CORE = 2\n", "CORE = 1\n"))

    set_version(tree, "2.0.0")
    broken = tree / "orchestrator" / "supervise" / "rollout.py"
    broken.write_text(broken.read_text() + "\ndef broken(:\n")
    refused = orch("upgrade", "-c", str(master.config), timeout=60)
    assert refused.returncode == 1, refused.stdout
    assert "upgrade refused, nothing changed" in refused.stderr and "rollout.py:" in refused.stderr
    assert "SyntaxError" in refused.stderr

    (tree / "orchestrator" / "cli" / "__init__.py").write_text("def main(:\n")  # fails before our code runs
    refused = orch("upgrade", "-c", str(master.config), timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert refused.returncode == 1 and "SyntaxError" in refused.stderr, refused.stderr

    # a saved file is carried (test_upgrade_inflight.py), a config whose last reload failed is not
    master.config.write_text(master.config.read_text() + "\n[workers.bad]\nreplicas = 1\n")
    failed = orch("reload", "-c", str(master.config), env={"PYTHONPATH": str(ROOT)})
    assert failed.returncode == 2, failed.stdout + failed.stderr
    refused = orch("upgrade", "-c", str(master.config), timeout=60, env={"PYTHONPATH": str(ROOT)})
    assert refused.returncode == 1 and "does not load" in refused.stderr, refused.stderr

    status = master.call("status")
    assert status["pid"] == master.pid and status["versions"]["master"] == "0.1.0"
    assert status["versions"]["upgrades"] == 0
    assert fleet(master) == before
    for log in ("ticker.log", "ticker-1.log"):
        assert_every_line_once(master.log_dir / log)
    assert master.terminate() == 0


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["proof", "exec"])
def test_sigkill_of_the_master_mid_upgrade_leaves_nothing_running(start_master, tmp_path, moment):
    master = start_master(ticker_config(tmp_path))
    running = master.wait_running(2)
    spawner = [p for p in psutil.Process(master.pid).children() if "spawner" in " ".join(p.cmdline())][0]
    watched = [spawner, *(psutil.Process(pid) for pid in running.values())]
    os.kill(master.pid, signal.SIGUSR2)
    if moment == "proof":
        proof = wait_for(lambda: next((p for p in psutil.Process(master.pid).children()
                                       if p.pid != spawner.pid), None), 10, 0.005, "the proof child")
        watched.append(proof)
    else:
        wait_for(lambda: "re-executes into" in master.stderr(), 30, 0.005, "the exec")
    os.kill(master.pid, signal.SIGKILL)
    master.proc.wait(5)
    gone, left = psutil.wait_procs(watched, timeout=15)
    assert not left, f"still running after the master's SIGKILL: {[p.pid for p in left]}"


@pytest.mark.slow
def test_autoscaled_cells_keep_their_count_and_pin_across_an_upgrade(start_master, redis_server, tmp_path):
    from queue_support import write_handlers
    from test_autoscale_run import REDIS, cells, config, running
    write_handlers(tmp_path)
    master = start_master(config(REDIS, f'url = "{redis_server.url}", queue = "{{{{ queue }}}}"', ["qa"],
                                 low=1, high=4, per=10))
    wait_for(lambda: running(master, "consumer-qa") == 1, 15)
    master.call("scale", target="consumer-qa", count=3, auto=False)
    wait_for(lambda: running(master, "consumer-qa") == 3, 15, message="3 pinned replicas")
    before = fleet(master)
    result = orch("upgrade", "-c", str(master.config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert fleet(master) == before, "the upgrade changed the autoscaled fleet"
    row = cells(master)["consumer-qa"]
    assert row["desired"] == 3 and row.get("pinned") == 3, row
    assert master.terminate() == 0


GROW_LATER = """
import pathlib, sys, time
while not pathlib.Path("go").exists():
    time.sleep(0.02)
block = bytearray(120 << 20); block[::4096] = b"x" * len(block[::4096])
time.sleep(1000)
"""


@pytest.mark.slow
def test_the_kernels_memory_watch_carries_over(start_master, tmp_path):
    from test_cgroups import require_cgroups
    require_cgroups()
    master = start_master(f"""
        [workers.grow]
        command = {json.dumps([PY, "-c", GROW_LATER])}
        cwd = "{tmp_path}"
        memory = {{ hard = "60MiB" }}
        min_uptime = "0s"
    """)
    first = master.wait_running(1)["grow"]
    result = orch("upgrade", "-c", str(master.config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert master.status()["grow"]["pid"] == first
    (tmp_path / "go").write_text("1")
    wait_for(lambda: master.status()["grow"]["reason"] == "memory_hard", 10, message="grow killed at its limit")
    after = master.stderr().split("took over 1 instances")[1]
    assert "the kernel holds its allocations at 60.0M (cgroup" in after, after
    assert master.terminate() == 0


@pytest.mark.slow
def test_a_sigterm_during_the_exec_waits_for_the_new_master_and_stops_gracefully(start_master, tmp_path):
    master = start_master(ticker_config(tmp_path))
    running = master.wait_running(2)
    # A ticker prints its first number after installing its handlers: a SIGTERM before that
    # would end it without the "SIGNAL 15" line this test looks for.
    wait_for(lambda: all("0\n" in text_of(master.log_dir / f"{name}.log") for name in running), 10,
             message="the tickers' handlers")
    os.kill(master.pid, signal.SIGUSR2)
    wait_for(lambda: "re-executes into" in master.stderr(), 30, 0.002, "the exec")
    os.kill(master.pid, signal.SIGTERM)  # while the new interpreter starts: held, not fatal
    assert master.proc.wait(30) == 0, master.stderr()
    assert "took over 2 instances" in master.stderr() and "SIGTERM: stopping 2 instances" in master.stderr()
    for name in running:
        assert "SIGNAL 15" in (master.log_dir / f"{name}.log").read_text(), "not stopped gracefully"


@pytest.mark.slow
def test_a_stop_in_progress_a_held_instance_and_a_backoff_carry_over(start_master, tmp_path):
    metrics = free_port()
    master = start_master(ticker_config(tmp_path, replicas=1, extra=f'metrics = "127.0.0.1:{metrics}"') + """
        [workers.stubborn]
        command = ["sh", "-c", "trap '' TERM; echo up; sleep 600 & wait; sleep 600"]
        stop_timeout = 6
        [workers.held]
        command = "sleep 600"
        [workers.crash]
        command = "sh -c 'sleep 0.2; exit 3'"
        min_uptime = 5
        backoff = { initial = "4s", max = "4s" }
        """)
    master.wait_running(4, timeout=15)
    wait_for(lambda: "up" in text_of(master.log_dir / "stubborn.log"), 10, message="stubborn's trap")
    master.call("stop", patterns=["held"], wait=True)
    wait_for(lambda: master.status()["crash"]["state"] in ("backoff", "crash-looping"), 15, message="crash backing off")
    stubborn = master.status()["stubborn"]["pid"]
    master.call("stop", patterns=["stubborn"])  # SIGTERM ignored: SIGKILL due 6 s from now
    asked = time.monotonic()
    crash = master.status()["crash"]
    import socket
    stream = socket.socket(socket.AF_UNIX)  # `orch events -f`: goes on under the new master
    stream.connect(str(master.socket))
    stream.sendall(json.dumps({"cmd": "events", "args": {"follow": True}}).encode() + b"\n")
    stream.settimeout(20)
    events = stream.makefile("rb")
    since = json.loads(events.readline())["result"]["seq"]
    result = orch("upgrade", "-c", str(master.config), timeout=60)
    assert result.returncode == 0, result.stderr
    from loadgen import http_get
    assert http_get(("127.0.0.1", metrics)) == 200, "the metrics socket, handed over, answers"
    rows = master.status()
    assert rows["held"]["state"] == "stopped" and rows["held"]["held"], rows["held"]
    assert rows["crash"]["restarts"] >= crash["restarts"] and rows["crash"]["last_exit"] == "exit 3"
    if time.monotonic() - asked < 5:  # else the deadline passed during the upgrade: nothing to see
        assert rows["stubborn"]["state"] == "stopping" and rows["stubborn"]["pid"] == stubborn, rows["stubborn"]
    row = wait_for(lambda: (r := master.status()["stubborn"])["state"] == "stopped" and r, 15,
                   message="the stop's SIGKILL deadline, kept by the new master")
    assert row["last_exit"] == "SIGKILL" and row["held"] and time.monotonic() - asked >= 5.5
    seqs = []  # the stream, carried over, brings the stop the new master saw; nothing lost or twice
    while not seqs or not (record["kind"] == "stopped" and record["instance"] == "stubborn"):
        record = json.loads(events.readline())["event"]
        seqs.append(record["seq"])
    assert seqs == list(range(since + 1, since + 1 + len(seqs))), seqs
    stream.close()
    assert not alive(stubborn)
    wait_for(lambda: master.status()["crash"]["restarts"] > crash["restarts"] + 1, 20,
             message="the crash loop going on under the new master")
    assert master.status()["held"]["state"] == "stopped"
    assert master.terminate() == 0


EXEC_FAILS = """
import os, signal, sys
from orchestrator.handover.carry import exec_successor, record_fd
sys.executable = "/nonexistent/python"
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append("SIGUSR1"))
read_end, write_end = os.pipe()
record = record_fd({"version": 2})
before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
error = exec_successor(record, [read_end], lambda: [signal.SIGUSR1])
print(type(error).__name__, error.errno)
print(os.get_inheritable(read_end), os.get_inheritable(record), os.get_inheritable(write_end))
print(signal.pthread_sigmask(signal.SIG_BLOCK, []) == before, got)
"""


def test_when_exec_fails_everything_is_as_it_was():
    """The old master goes on: its fds close-on-exec again, no signal left blocked, and the
    signal the loop had caught (raised again for the successor) is delivered here instead."""
    import subprocess
    done = subprocess.run([sys.executable, "-c", EXEC_FAILS], capture_output=True, text=True, timeout=30,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["FileNotFoundError 2", "False False False", "True ['SIGUSR1']"], done.stdout


@pytest.mark.slow
def test_an_exit_during_the_exec_reaches_the_new_master(start_master, tmp_path):
    # it exits once a "quit" written after its own start exists: its replacement runs on
    # (the same file made the replacement exit too, and the count read 1 or 2 by timing)
    quitter = json.dumps([PY, "-c", "import os, time\nt0 = time.time()\n"
                          "while not (os.path.exists('quit') and os.path.getmtime('quit') >= t0): time.sleep(0.005)"])
    master = start_master(ticker_config(tmp_path, replicas=1) + f"""
        [workers.quitter]
        command = {quitter}
        cwd = "{tmp_path}"
        min_uptime = 0.2
        """)
    running = master.wait_running(2)
    os.kill(master.pid, signal.SIGUSR2)
    wait_for(lambda: "re-executes into" in master.stderr(), 30, 0.002, "the exec")
    (tmp_path / "quit").write_text("1")  # it exits while the new interpreter starts
    wait_for(lambda: not alive(running["quitter"]), 5, message="quitter to exit")
    row = wait_for(lambda: (r := master.status()["quitter"])["pid"] not in (None, running["quitter"]) and r, 20,
                   message="quitter restarted by the new master")
    assert row["restarts"] == 1 and row["last_exit"] == "exit 0", row
    assert master.status()["ticker"]["pid"] == running["ticker"]
    assert master.terminate() == 0


@pytest.mark.slow
def test_a_master_older_than_orch_upgrade_says_to_restart_once(start_master, tmp_path, monkeypatch):
    tree = package_copy(tmp_path)
    commands = tree / "orchestrator" / "control" / "commands.py"
    commands.write_text(commands.read_text().replace("def cmd_upgrade(", "def _no_upgrade("))
    monkeypatch.setenv("PYTHONPATH", str(tree))
    master = start_master(ticker_config(tmp_path, replicas=1))
    refused = orch("upgrade", "-c", str(master.config), env={"PYTHONPATH": str(ROOT)})
    assert refused.returncode == 1 and "predates `orch upgrade`: restart it once" in refused.stderr, refused.stderr


@pytest.mark.parametrize("orig, argv, options", [
    (["py", "-m", "orchestrator", "up", "-c", "w.toml"], ["/x/__main__.py", "up", "-c", "w.toml"], []),
    (["py", "-X", "dev", "-I", "-m", "orchestrator", "up"], ["/x/__main__.py", "up"], ["-X", "dev", "-I"]),
    (["py", "/venv/bin/orch", "up", "-d"], ["/venv/bin/orch", "up", "-d"], []),
    (["py", "-O", "/venv/bin/orch", "up"], ["/venv/bin/orch", "up"], ["-O"]),
    (["py", "-c", "code", "up"], ["-c", "up"], []),  # another shape: nothing kept
    ([], ["orch", "up"], []),
])
def test_the_successor_keeps_the_interpreters_options(orig, argv, options):
    from orchestrator.handover.carry import interpreter_options
    assert interpreter_options(orig, argv) == options


SLOW_TO_READY = '''
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with open(sys.argv[1], "a") as starts:
    starts.write(f"{os.getpid()}:{os.environ.get('RELEASE')}\\n")
gate = os.environ.get("GATE")  # ready (READY=1) once this file exists; else up min_uptime
while gate and not os.path.exists(gate):
    time.sleep(0.02)
if gate:
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(1)
'''


def slow_config(tmp_path: Path, release: str, gate: bool) -> str:
    ready = f'min_uptime = 600\n        env = {{ RELEASE = "{release}", GATE = "{tmp_path / "go"}" }}' if gate else \
        f'min_uptime = 2\n        env = {{ RELEASE = "{release}" }}'
    return f"""
        [orchestrator]
        watch = false
        [workers.slow]
        command = "{PY} {tmp_path / 'slow.py'} {tmp_path / 'starts'}"
        {ready}
        replicas = 4
        stop_timeout = 2
        rolling = true
        """


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "reload"])
def test_a_rolling_restart_goes_on_under_the_new_master(start_master, tmp_path, how):
    """`orch upgrade` in the middle of a rolling restart (`orch restart --rolling`, waiting,
    of instances ready at READY=1; or a reload that changed a `rolling` template, ready after
    min_uptime) of a template slow to be ready: the new master goes on with the batch where
    the old one stood; every instance restarts exactly once, onto the new config, the rollout
    ends, and the waiting `orch restart` is answered."""
    (tmp_path / "slow.py").write_text(SLOW_TO_READY)
    starts = tmp_path / "starts"
    gate = how == "restart"  # held at its first batch until the test opens the gate: surely mid-way
    master = start_master(slow_config(tmp_path, "one", gate))
    before = master.wait_running(4)
    wait_for(lambda: len(starts.read_text().split()) == 4 if starts.exists() else False, 10, message="4 starts")
    config = str(master.config)
    waiting = None
    if how == "restart":  # and it waits for the instances to be ready: answered by the new master
        label, release = "4 instances", "one"
        waiting = subprocess.Popen([PY, "-m", "orchestrator", "restart", "--rolling", "template:slow", "-c", config],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: master.call("status")["rollouts"], 10, message="the rollout to begin")
    else:
        label, release = "template slow", "two"
        master.config.write_text(textwrap.dedent(slow_config(tmp_path, release, gate)))
        assert orch("reload", "-c", config).returncode == 0
    rolling = master.call("status")["rollouts"]
    assert [r["label"] for r in rolling] == [label] and rolling[0]["done"] < 4, rolling
    assert f"rolling restart of {label}" in orch("status", "-c", config).stdout
    upgrade = orch("upgrade", "-c", config, timeout=60)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    (tmp_path / "go").touch()
    wait_for(lambda: not master.call("status")["rollouts"], 30, message="the rollout to end")
    if waiting is not None:
        assert waiting.wait(30) == 0, waiting.stdout.read()
    log = master.stderr()
    carried = re.search(rf"rolling restart of {label} goes on: (\d) of 4 instances left", log)
    assert carried and int(carried[1]) >= 1 and (not gate or carried[1] == "4"), log
    assert log.index("took over 4 instances") < log.index(f"rolling restart of {label} done"), log
    rows = master.status()
    assert {name: row["restarts"] for name, row in rows.items()} == {name: 1 for name in before}, rows
    assert not set(before.values()) & {row["pid"] for row in rows.values()}
    started = starts.read_text().split()
    assert len(started) == 8 == len(set(started)), f"each instance started exactly twice: {started}"
    assert [line.split(":")[1] for line in started[4:]] == [release] * 4, started
    assert {row["state"] for row in rows.values()} == {"running"} and master.proc.poll() is None


NOTIFIER = '''
import os, socket, time
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(1)
'''


@pytest.mark.slow
def test_probe_counts_and_what_the_notify_socket_heard_carry_over(start_master, tmp_path):
    """A liveness probe failing towards its limit goes on counting (not from 0), a startup
    probe that passed is not run again, and an instance made ready by READY=1 stays ready."""
    (tmp_path / "notifier.py").write_text(NOTIFIER)
    (tmp_path / "listener.py").write_text("import socket, sys, time\n"
                                          "s = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
                                          "time.sleep(600)\n")
    closed, listening = free_port(), free_port()
    master = start_master(f"""
        [orchestrator]
        watch = false
        [workers.noisy]
        command = "{PY} {tmp_path / 'listener.py'} {listening}"
        probes.startup = {{ tcp = "127.0.0.1:{listening}", period = "0.1s", failures = 100 }}
        probes.liveness = {{ tcp = "127.0.0.1:{closed}", period = "0.1s", failures = 1000 }}
        [workers.notifier]
        command = "{PY} {tmp_path / 'notifier.py'}"
        probes.readiness = {{ notify = true, period = "0.1s", failures = 1 }}
        """)
    before = master.wait_running(2)
    wait_for(lambda: master.status()["noisy"]["probes"]["liveness"]["failures"] >= 5, 10, message="liveness failing")
    wait_for(lambda: master.status()["notifier"]["ready"], 10, message="READY=1")
    rows = master.status()
    upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    after = master.status()
    startup, liveness = after["noisy"]["probes"]["startup"], after["noisy"]["probes"]["liveness"]
    assert startup["checks"] == rows["noisy"]["probes"]["startup"]["checks"] and not startup["active"], startup
    assert liveness["failures"] >= rows["noisy"]["probes"]["liveness"]["failures"], (rows["noisy"], liveness)
    checks = after["notifier"]["probes"]["readiness"]["checks"]
    wait_for(lambda: master.status()["notifier"]["probes"]["readiness"]["checks"] > checks + 3, 10,
             message="the readiness probe checked again by the new master")
    final = master.status()
    failed = rows["notifier"]["probes"]["readiness"]["failed"]  # checks before its READY=1, if any
    assert final["notifier"]["ready"] and final["notifier"]["probes"]["readiness"]["failed"] == failed, \
        final["notifier"]["probes"]
    assert {name: row["pid"] for name, row in final.items()} == before
    assert final["noisy"]["probes"]["liveness"]["failures"] > liveness["failures"]


@pytest.mark.slow
def test_code_reload_and_upgrade_counters_carry_over(start_master, tmp_path):
    (tmp_path / "prew.py").write_text(PRELOADED)
    metrics = free_port()
    master = start_master(f"""
        [orchestrator]
        watch = false
        metrics = "127.0.0.1:{metrics}"
        [workers.pre]
        target = "prew:Tick"
        preload = true
        cwd = "{tmp_path}"
        min_uptime = 0.1
        """)
    master.wait_running(1, timeout=20)
    reloaded = orch("reload", "--code", "-c", str(master.config), timeout=60)
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    from test_service import samples, scrape
    assert samples(scrape(metrics)[1])["orch_code_reloads_total"] == 1
    upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    found = samples(scrape(metrics)[1])
    assert found["orch_code_reloads_total"] == 1 and found["orch_upgrades_total"] == 1, found
    again = orch("reload", "--code", "-c", str(master.config), timeout=60)  # a fresh token, not a reused one
    assert again.returncode == 0, again.stdout + again.stderr
    assert samples(scrape(metrics)[1])["orch_code_reloads_total"] == 2


@pytest.mark.slow
def test_a_reloads_removal_in_progress_carries_over_with_its_sigkill_deadline(start_master, tmp_path):
    """A template removed by a reload whose process ignores SIGTERM: the upgrade does not wait
    for its stop; the new master SIGKILLs it at the old master's deadline."""
    master = start_master(ticker_config(tmp_path, replicas=1) + """
        [workers.stubborn]
        command = ["sh", "-c", "trap '' TERM; echo up; sleep 600 & wait; sleep 600"]
        stop_timeout = 6
        """)
    master.wait_running(2)
    wait_for(lambda: "up" in text_of(master.log_dir / "stubborn.log"), 10, message="stubborn's trap")
    stubborn = master.status()["stubborn"]["pid"]
    master.config.write_text(textwrap.dedent(ticker_config(tmp_path, replicas=1)))
    reloaded = orch("reload", "-c", str(master.config))
    asked = time.monotonic()
    assert reloaded.returncode == 0 and master.status()["stubborn"]["state"] == "stopping", reloaded.stderr
    upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    wait_for(lambda: re.search(r"stubborn\[\d+\] \(removed from the config\) is still stopping", master.stderr()),
             5, message="the new master's word on the removal (its log is written at the end of its turn)")
    assert alive(stubborn)
    wait_for(lambda: not alive(stubborn), 15, message="the removal's SIGKILL, from the new master")
    assert time.monotonic() - asked >= 5.5 and "stubborn" not in master.status()
