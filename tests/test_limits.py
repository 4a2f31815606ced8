"""Worker limits, the Python worker API and the orphan sweep, with real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

from conftest import alive, kill_master_spawner_and_guard, text_of, wait_for

PY = sys.executable


def command(code: str) -> str:
    """A TOML `command = [...]` line running a Python snippet."""
    return "command = " + json.dumps([PY, "-c", textwrap.dedent(code)])


def reason_row(master, name: str, reason: str, timeout: float = 8.0) -> dict:
    def seen():
        row = master.status()[name]
        return row if row["reason"] == reason and row["state"] == "running" and row["pid"] else None
    return wait_for(seen, timeout, message=f"{name} recycled for {reason}")


GROW = """
import signal, sys, time, pathlib
marker = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else None
def term(*_):
    pathlib.Path("saw-term").write_text("yes")
    sys.exit(0)
signal.signal(signal.SIGTERM, term if "{mode}" == "term" else signal.SIG_IGN)
if pathlib.Path("grown").exists():
    time.sleep(1000)               # the replacement stays small
pathlib.Path("grown").write_text("1")
block = bytearray({size}) ; block[::4096] = b"x" * len(block[::4096])
print("grown", flush=True)
time.sleep(1000)
"""


def test_over_the_soft_limit_gets_the_stop_signal_and_is_replaced(start_master, tmp_path):
    master = start_master(f"""
        [orchestrator]
        check_interval = "100ms"
        cgroup = "off"  # the sampling path (tests/test_cgroups.py: the kernel's)
        [workers.grow]
        {command(GROW.format(mode="term", size=80 * 2**20))}
        memory = {{ soft = "40MiB", hard = "400MiB" }}
        min_uptime = "0s"  # a recycle, not a breach at start (those back off)
    """)
    first = master.wait_running(1)["grow"]
    row = reason_row(master, "grow", "memory_soft")
    assert row["pid"] != first and row["restarts"] == 1 and row["limit_kills"] == {"memory_soft": 1}
    assert (tmp_path / "saw-term").read_text() == "yes", "the worker saw SIGTERM, a graceful stop"
    assert row["last_exit"] == "exit 0"
    assert "memory_soft (RSS" in master.stderr()


def test_over_the_hard_limit_gets_sigkill_at_once(start_master, tmp_path):
    master = start_master(f"""
        [orchestrator]
        check_interval = "100ms"
        cgroup = "off"  # the sampling path (tests/test_cgroups.py: the kernel's)
        [workers.grow]
        {command(GROW.format(mode="ignore", size=120 * 2**20))}
        memory = {{ soft = "30MiB", hard = "60MiB" }}
        min_uptime = "0s"  # a recycle, not a breach at start (those back off)
    """)
    master.wait_running(1)
    row = reason_row(master, "grow", "memory_hard")
    assert row["last_exit"] == "SIGKILL" and row["limit_kills"].get("memory_hard") == 1
    assert not (tmp_path / "saw-term").exists()


def test_a_child_forked_after_the_start_counts_against_the_instances_limit(start_master, tmp_path):
    """The sampler looks for a tree's new descendants every few samples (LOOK_EVERY): a
    child the worker forks a second after it started, and that grows, is still caught."""
    script = tmp_path / "grow.py"
    script.write_text(GROW.format(mode="ignore", size=120 * 2**20))
    master = start_master(f"""
        [orchestrator]
        check_interval = "100ms"
        cgroup = "off"
        [workers.parent]
        command = ["sh", "-c", "sleep 1; {PY} {script} & wait"]
        memory = {{ hard = "60MiB" }}
        min_uptime = "0s"
    """)
    master.wait_running(1)
    row = reason_row(master, "parent", "memory_hard")
    assert row["limit_kills"] == {"memory_hard": 1}
    assert "memory_hard (RSS" in master.stderr()


PY_WORKERS = """
import os, time, pathlib
from orchestrator.worker import Worker

class Counting(Worker):
    def init(self):
        self.runs = 0
    def run(self):
        self.runs += 1
        with open("runs.log", "a") as f:
            f.write(f"{os.getpid()} {self.name} {self.kwargs['q']}\\n")
        return True
    def after_run(self):
        with open("after.log", "a") as f:
            f.write(f"{os.getpid()} {self.runs}\\n")

class Hangs(Worker):
    def run(self):
        if pathlib.Path("hung").exists():
            return True
        pathlib.Path("hung").write_text(str(os.getpid()))
        time.sleep(1000)
"""


def test_a_python_worker_is_replaced_after_exactly_max_requests(start_master, tmp_path):
    (tmp_path / "app.py").write_text(PY_WORKERS)
    master = start_master("""
        [workers.count]
        target = "app:Counting"
        kwargs = { q = "{{ q }}" }
        matrix = { q = ["jobs"] }
        check_point = "50ms"
        max_requests = 3
        preload = false
    """)
    first = master.wait_running(1)["count-jobs"]
    row = reason_row(master, "count-jobs", "max_requests")
    assert row["pid"] != first
    runs = [line.split() for line in (tmp_path / "runs.log").read_text().splitlines()]
    assert [r for r in runs if r[0] == str(first)] == [[str(first), "count-jobs", "jobs"]] * 3
    assert f"{first} 3" in (tmp_path / "after.log").read_text().splitlines()
    wait_for(lambda: re.search(rf"count-jobs\[{first}\] stopped \((SIGTERM|exit 0), max_requests\)",
                               master.stderr()), 5,
             message="the recycle's log line to give its reason")


def test_a_run_that_hangs_past_timeout_is_killed_and_replaced(start_master, tmp_path):
    (tmp_path / "app.py").write_text(PY_WORKERS)
    master = start_master("""
        [workers.hang]
        target = "app:Hangs"
        timeout = "500ms"
        min_uptime = "0s"
        check_point = "50ms"
        preload = true
    """)
    # exists() can be true before the pid is written: wait for the whole number
    wait_for(lambda: (tmp_path / "hung").exists() and (tmp_path / "hung").read_text().strip(),
             message="the hanging run")
    hung = int((tmp_path / "hung").read_text())
    row = reason_row(master, "hang", "timeout")
    assert row["last_exit"] == "SIGKILL" and row["pid"] != hung and not alive(hung)


NOTIFY_CLIENT = """
import os, socket, sys, time
def say(msg):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg.encode(), os.environ["NOTIFY_SOCKET"])
say("READY=1\\nSTATUS=warming up")
mode = sys.argv[1]
if mode == "requests":
    for n in range(100):
        say("ORCH_BEGIN=1"); time.sleep(0.05)
        print("request", n + 1, flush=True)  # before ORCH_END: the stop may follow at once
        say("ORCH_END=1")
    time.sleep(1000)
elif mode == "hang":
    say("ORCH_BEGIN=1"); time.sleep(1000)
else:
    time.sleep(1000)               # READY=1, then silence: no WATCHDOG=1
"""


def test_a_command_worker_speaking_notify_is_held_to_max_requests(start_master, tmp_path):
    master = start_master(f"""
        [workers.cmd]
        command = {json.dumps([PY, "-c", NOTIFY_CLIENT, "requests"])}
        max_requests = 2
    """)
    first = master.wait_running(1)["cmd"]
    row = reason_row(master, "cmd", "max_requests")
    assert row["pid"] != first and row["notify_status"] == "warming up"
    log = text_of(master.log_dir / "cmd.log")
    assert "request 2" in log


def test_a_command_worker_speaking_notify_is_held_to_timeout(start_master):
    master = start_master(f"""
        [workers.hang]
        command = {json.dumps([PY, "-c", NOTIFY_CLIENT, "hang"])}
        timeout = "300ms"
        min_uptime = "0s"
        [workers.silent]
        command = {json.dumps([PY, "-c", NOTIFY_CLIENT, "silent"])}
        timeout = "300ms"
        min_uptime = "0s"
        [workers.plain]
        command = "sleep 1000"
        timeout = "300ms"
        min_uptime = "0s"
    """)
    plain = master.wait_running(3)["plain"]
    reason_row(master, "hang", "timeout")
    reason_row(master, "silent", "timeout")
    assert master.status()["plain"]["pid"] == plain, "a worker that never speaks notify is not timed"


def test_max_lifetime_recycles_without_backoff(start_master):
    master = start_master("""
        [workers.old]
        command = "sleep 1000"
        max_lifetime = "400ms"
        backoff = { initial = "30s", max = "60s" }
    """)
    first = master.wait_running(1)["old"]
    row = reason_row(master, "old", "max_lifetime", timeout=3)
    assert row["pid"] != first
    second = row["pid"]
    wait_for(lambda: master.status()["old"]["pid"] not in (second, None), 3, message="a second recycle")


def test_the_next_master_ends_what_a_killed_master_and_spawner_left(start_master, tmp_path):
    config = """
        [workers.tree]
        command = "sh -c 'sleep 1000 & wait'"
    """
    master = start_master(config)
    master.wait_running(1)
    grandchild = wait_for(lambda: [p for p in master.descendants() if p.name() == "sleep"],
                          message="the grandchild")[0]
    wait_for(lambda: master.pidfile.with_name("orch.pid.state").exists(), message="the state file")
    kill_master_spawner_and_guard(master)  # nobody left to clean up
    master.proc.wait(5)
    time.sleep(0.2)
    assert alive(grandchild.pid), "the grandchild outlived master, spawner and guard"
    again = start_master(config)
    wait_for(lambda: not alive(grandchild.pid), 5, message="the leftover to be ended")
    again.wait_running(1)
    assert f"ending pid {grandchild.pid} left behind" in again.stderr()


def test_a_hundred_preloaded_python_workers_come_up(start_master, tmp_path):
    (tmp_path / "app.py").write_text(PY_WORKERS)
    master = start_master("""
        [workers.many]
        target = "app:Counting"
        kwargs = { q = "q" }
        replicas = 100
        check_point = "5s"
        preload = true
    """)
    began = time.monotonic()
    running = master.wait_running(100, timeout=60)
    took = time.monotonic() - began
    assert len(set(running.values())) == 100
    # A worker just forked from the zygote carries its title until it sets its own: count
    # only the spawner's children.
    spawner = next(p for p in master.descendants() if p.ppid() == master.pid)
    zygotes = [p for p in spawner.children() if "zygote" in " ".join(p.cmdline())]
    assert len(zygotes) == 1 and all(p.ppid() == zygotes[0].pid for p in
                                      (__import__("psutil").Process(pid) for pid in running.values()))
    print(f"100 preloaded workers up in {took:.2f}s")


def test_a_python_worker_module_next_to_the_config_imports_without_preload(tmp_path):
    (tmp_path / "app.py").write_text(PY_WORKERS)
    result = subprocess.run([PY, "-m", "orchestrator.worker", "--target", "app:Nope",
                             "--pythonpath", str(tmp_path)], capture_output=True, text=True, timeout=20)
    assert result.returncode != 0 and "Nope" in result.stderr
