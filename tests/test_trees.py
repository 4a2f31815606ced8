"""What orch does to an instance reaches exactly its processes: fds, whole trees, orphans,
the run cookie and the sweep after a crash. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from conftest import alive, guard_of, kill_master_spawner_and_guard, spawner_of, wait_for

PY = sys.executable

FD_WORKER = """
import os
from orchestrator.worker import Worker

class Fds(Worker):
    def init(self):
        links = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                links[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass  # the listing's own fd, closed already
        with open(f"fds-{self.name}.tmp", "w") as f:
            f.write(__import__("json").dumps(links))
        os.replace(f"fds-{self.name}.tmp", f"fds-{self.name}.json")  # never read half-written
    def run(self):
        return False
"""

# Forks twice and leaves its session, like a classic daemon; records its pid, then lives on.
DAEMON = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
with open("daemons.txt", "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(1000)
"""


def fds_of(pid: int) -> dict[str, str]:
    links = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return links


def pids_in(path: Path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_child_gets_only_fds_0_1_2_not_the_launchers_nor_its_siblings(start_master, tmp_path):
    (tmp_path / "fdapp.py").write_text(FD_WORKER)
    secret = os.open(tmp_path / "secret.txt", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        master = start_master("""
            [workers.plain]
            command = "sleep 1000"
            replicas = 3
            [workers.pre]
            target = "fdapp:Fds"
            replicas = 2
            preload = true
            check_point = "1s"
            [workers.py]
            target = "fdapp:Fds"
            check_point = "1s"
        """, pass_fds=(secret,))
    finally:
        os.close(secret)
    running = master.wait_running(6, timeout=20)
    assert str(tmp_path / "secret.txt") in fds_of(master.pid).values(), "the launcher's fd reached the master"
    for name in ("plain", "plain-1", "plain-2"):  # replica 0 keeps the unsuffixed name
        links = fds_of(running[name])
        assert set(links) == {"0", "1", "2"}, f"{name} has {links}"
        assert links["0"] == "/dev/null" and links["1"] == links["2"] and links["1"].startswith("pipe:")
    assert len({fds_of(running[n])["1"] for n in ("plain", "plain-1", "plain-2")}) == 3
    for name in ("pre", "pre-1", "py"):
        links = wait_for(lambda: (tmp_path / f"fds-{name}.json").exists()
                         and json.loads((tmp_path / f"fds-{name}.json").read_text()), 10, message=name)
        extra = {fd: link for fd, link in links.items() if fd not in ("0", "1", "2")}
        # The worker runtime's own wake-up socketpair is all it may have opened by init().
        assert len(extra) == 2 and all(link.startswith("socket:") for link in extra.values()), (name, links)
        assert links["1"].startswith("pipe:") and links["0"] == "/dev/null", (name, links)
    spawner = spawner_of(master)
    for helper in [spawner, *spawner.children()]:
        assert str(tmp_path / "secret.txt") not in fds_of(helper.pid).values(), helper.cmdline()


def test_fd_counts_of_master_and_helpers_stay_flat_under_a_sigkill_storm(start_master, tmp_path):
    (tmp_path / "fdapp.py").write_text(FD_WORKER)
    master = start_master("""
        [workers.crash]
        command = "sleep 1000"
        replicas = 30
        min_uptime = "0s"
        [workers.pre]
        target = "fdapp:Fds"
        replicas = 10
        preload = true
        check_point = "1s"
        min_uptime = "0s"
    """)
    master.wait_running(40, timeout=30)
    spawner = spawner_of(master)
    helpers = [master.pid, spawner.pid, *(p.pid for p in spawner.children() if "zygote" in " ".join(p.cmdline()))]
    assert len(helpers) == 3
    before = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in helpers}
    kills, deadline = 0, time.monotonic() + 10
    while time.monotonic() < deadline:
        for row in master.status().values():
            if row["pid"] and row["state"] == "running":
                try:
                    os.kill(row["pid"], signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        time.sleep(0.05)
    master.wait_running(40, timeout=30)
    time.sleep(0.5)  # the last exits' pipes reach EOF
    after = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in helpers}
    print(f"{kills} SIGKILLs; fds before {before}, after {after}")
    assert kills > 400
    for pid in helpers:
        assert after[pid] <= before[pid] + 4, (pid, before, after)


def test_a_launcher_script_cannot_leave_background_jobs_behind(start_master, tmp_path):
    master = start_master("""
        [workers.launcher]
        command = "sh -c 'sleep 1001 & echo $! > bg.pid; setsid sleep 1002 & echo $! >> bg.pid; exit 3'"
        restart = "never"
    """)
    background = wait_for(lambda: len(pids_in(tmp_path / "bg.pid")) == 2 and pids_in(tmp_path / "bg.pid"),
                          message="the background jobs")
    try:
        wait_for(lambda: master.status()["launcher"]["state"] == "exited", message="the launcher to exit")
        wait_for(lambda: not any(alive(pid) for pid in background), 5, message="its background jobs to end")
    finally:
        kill_all(background)


def test_every_child_carries_the_run_cookie_and_its_instance_name(start_master, tmp_path):
    master = start_master("""
        [workers.w]
        command = "sleep 1000"
        replicas = 2
    """)
    running = master.wait_running(2)
    state_file = master.pidfile.with_name("orch.pid.state")
    state = json.loads(wait_for(lambda: state_file.exists() and state_file.read_text(), message="the state file"))
    for name, pid in running.items():
        env = psutil.Process(pid).environ()
        assert env["ORCH_RUN"] == state["run"] and env["ORCH_INSTANCE"] == name


def daemon_config(tmp_path: Path) -> str:
    (tmp_path / "daemon.py").write_text(DAEMON)
    return f"""
        [workers.d]
        command = ["sh", "-c", "{PY} daemon.py; exec sleep 1000"]
        stop_timeout = "2s"
    """


def test_a_double_forked_daemon_belongs_to_its_instance_through_restart_and_down(start_master, tmp_path):
    master = start_master(daemon_config(tmp_path))
    daemons = tmp_path / "daemons.txt"
    try:
        leader = master.wait_running(1)["d"]
        first = wait_for(lambda: pids_in(daemons), message="the daemon")[0]
        spawner = spawner_of(master).pid
        wait_for(lambda: psutil.Process(first).ppid() == spawner, message="the daemon orphaned to the spawner")
        assert os.getsid(first) != leader and os.getpgid(first) != leader, "it left the instance's session"
        # The spawner adopts it (one look at its children a second) and status counts it.
        wait_for(lambda: master.status()["d"]["processes"] == 2, 5, message="the daemon counted in status")
        master.call("restart", patterns=["d"])
        second = wait_for(lambda: len(pids_in(daemons)) == 2 and pids_in(daemons)[1], 10, message="a new daemon")
        wait_for(lambda: not alive(first), 5, message="the old daemon to be ended by the restart")
        assert alive(second)
        assert master.terminate() == 0
        wait_for(lambda: not alive(second), 5, message="orch down to end the daemon")
    finally:
        kill_all(pids_in(daemons))


def test_the_next_up_ends_escaped_daemons_of_a_sigkilled_master_and_spawner(start_master, tmp_path):
    config = daemon_config(tmp_path)
    master = start_master(config)
    daemons = tmp_path / "daemons.txt"
    bystanders = []
    try:
        master.wait_running(1)
        daemon = wait_for(lambda: pids_in(daemons), message="the daemon")[0]
        state_file = master.pidfile.with_name("orch.pid.state")
        state = json.loads(wait_for(lambda: state_file.exists() and state_file.read_text(),
                                    message="the state file"))
        # Not orch's: another run's cookie with the same instance name, and one without any.
        for env in ({"ORCH_RUN": "0123456789abcdef", "ORCH_INSTANCE": "d"}, {}):
            bystanders.append(subprocess.Popen(["sleep", "1000"], env={**os.environ, **env},
                                               start_new_session=True))
        kill_master_spawner_and_guard(master)
        master.proc.wait(5)
        time.sleep(0.2)
        assert alive(daemon), "the daemon (its own session) outlived master, spawner and guard"
        assert psutil.Process(daemon).environ()["ORCH_RUN"] == state["run"]
        (tmp_path / "daemon.py").write_text("import time; time.sleep(1000)")  # the next run starts no daemon
        again = start_master(config)
        wait_for(lambda: not alive(daemon), 5, message="the escaped daemon to be ended")
        again.wait_running(1)
        assert f"ending pid {daemon} left behind" in again.stderr()
        assert all(proc.poll() is None for proc in bystanders), "a process orch did not start was hit"
    finally:
        kill_all(pids_in(daemons))
        for proc in bystanders:
            proc.kill()
            proc.wait()


def test_the_sweep_never_signals_a_process_that_is_not_the_one_it_found(tmp_path):
    import psutil
    from orchestrator.procfs import start_time
    from orchestrator.spawn.orphans import kill_checked, ticks
    gone = subprocess.Popen(["sleep", "1000"])
    found = psutil.Process(gone.pid)
    assert ticks(found) == start_time(gone.pid), "psutil's start time in the state file's unit"
    gone.kill()
    gone.wait()
    assert not kill_checked(found), "a process that is gone (its pid free for reuse) was signalled"
    proc = subprocess.Popen(["sleep", "1000"])
    try:
        assert kill_checked(psutil.Process(proc.pid))
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_spawner_takes_escaped_daemons_with_it(start_master, tmp_path):
    master = start_master(daemon_config(tmp_path))
    daemons = tmp_path / "daemons.txt"
    try:
        master.wait_running(1)
        first = wait_for(lambda: pids_in(daemons), message="the daemon")[0]
        spawner_of(master).kill()
        # A bound, not a target: the guard starts a Python and reads every process's environ,
        # which took over 5 s under a load average over 100 (5 parallel runs).
        wait_for(lambda: not alive(first), 15, message="the escaped daemon to be ended")
        wait_for(lambda: len(pids_in(daemons)) == 2, 10, message="the fleet to come back")
        master.wait_running(1)
    finally:
        kill_all(pids_in(daemons))


def test_cookie_parsing_is_exact():
    from orchestrator.spawn.trees import cookie
    env = b"A=1\0ORCH_RUN=abc\0ORCH_INSTANCE=web-0\0"
    assert cookie(env, "abc") == "web-0"
    assert cookie(env, "ab") is None and cookie(b"XORCH_RUN=abc\0ORCH_INSTANCE=w", "abc") is None
    assert cookie(b"ORCH_INSTANCE=w\0", "abc") is None


def test_a_growing_daemon_counts_against_its_instances_memory_hard(start_master, tmp_path):
    (tmp_path / "daemon.py").write_text(DAEMON.replace("time.sleep(1000)", textwrap.dedent("""
        block = bytearray(200 * 2**20)
        block[::4096] = b"x" * len(block[::4096])
        time.sleep(1000)""")))
    master = start_master(f"""
        [orchestrator]
        check_interval = "100ms"
        [workers.d]
        command = ["sh", "-c", "{PY} daemon.py; exec sleep 1000"]
        memory = {{ hard = "150MiB" }}
        min_uptime = "0s"
    """)
    daemons = tmp_path / "daemons.txt"
    try:
        master.wait_running(1)
        first = wait_for(lambda: pids_in(daemons), message="the daemon")[0]
        row = wait_for(lambda: (r := master.status()["d"])["reason"] == "memory_hard" and r, 10,
                       message="the hard limit to count the orphaned daemon")
        assert row["limit_kills"] == {"memory_hard": 1}
        wait_for(lambda: not alive(first), 5, message="the daemon to be killed with its instance")
    finally:
        kill_all(pids_in(daemons))


HORSE_APP = """
import os, signal, time
from orchestrator.worker import Worker

class Horse(Worker):
    def init(self):
        if os.fork() == 0:          # like rq's work-horse: fork, no exec, own process group
            os.setpgrp()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open("horses.txt", "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(1000)
            os._exit(0)
    def run(self):
        return False
"""


def test_a_preloaded_workers_forked_child_in_its_own_group_ends_with_the_worker(start_master, tmp_path):
    (tmp_path / "horseapp.py").write_text(HORSE_APP)
    master = start_master("""
        [workers.h]
        target = "horseapp:Horse"
        preload = true
        check_point = "1s"
        stop_timeout = "1s"
    """)
    horses = tmp_path / "horses.txt"
    try:
        worker = master.wait_running(1, timeout=20)["h"]
        first = wait_for(lambda: pids_in(horses), 10, message="the horse")[0]
        assert os.getpgid(first) == first and os.getsid(first) == worker, "own group, the worker's session"
        os.kill(worker, signal.SIGKILL)  # the worker dies; its horse, orphaned, has no cookie in /proc
        wait_for(lambda: not alive(first), 5, message="the orphaned horse to be ended with its worker")
        second = wait_for(lambda: len(pids_in(horses)) == 2 and pids_in(horses)[1], 10, message="a new horse")
        assert orch_stop(master, "h").returncode == 0
        assert not alive(second), "the stop (SIGTERM ignored, then SIGKILL to the tree) reached the horse"
    finally:
        kill_all(pids_in(horses))


def orch_stop(master, name: str):
    from conftest import orch
    return orch("stop", name, "-c", str(master.config))


def test_a_sigkill_of_the_masters_process_group_leaves_nothing_running(start_master, tmp_path):
    """`kill -9 -PGID` takes master and spawner at once; the guard (its own group) ends the
    direct children (posix_spawned, no PDEATHSIG), their descendants and escaped daemons."""
    master = start_master(daemon_config(tmp_path) + """
        [workers.plain]
        command = "sleep 1000"
        replicas = 3
        [workers.tree]
        command = "sh -c 'sleep 1000 & wait'"
    """)
    daemons = tmp_path / "daemons.txt"
    try:
        pids = master.wait_running(5)
        daemon = wait_for(lambda: pids_in(daemons), message="the daemon")[0]
        grandchild = wait_for(lambda: [p.pid for p in psutil.Process(pids["tree"]).children()],
                              message="tree's sleep")[0]
        guard = guard_of(master).pid
        os.killpg(master.pid, signal.SIGKILL)
        master.proc.wait(5)
        everything = [*pids.values(), daemon, grandchild]
        wait_for(lambda: not any(alive(pid) for pid in everything), 5, message="the guard to end them all")
        wait_for(lambda: not alive(guard), 5, message="the guard to exit")
        assert f"ending pid {daemon} left behind by the dead spawner" in master.stderr()
    finally:
        kill_all(pids_in(daemons))


def test_a_killed_guard_is_replaced_and_a_clean_stop_ends_it(start_master, tmp_path):
    master = start_master("""
        [workers.w]
        command = "sleep 1000"
    """)
    pid = master.wait_running(1)["w"]
    first = guard_of(master)
    first.kill()
    second = wait_for(lambda: (g := guard_of(master)) and g.pid != first.pid and g, 5, message="a new guard")
    assert alive(pid), "the guard's death touched the fleet"
    master.terminate()
    assert not alive(pid) and not alive(second.pid)
    assert "left behind" not in master.stderr(), "a clean stop swept"


def test_a_child_starts_with_default_signals_its_own_session_and_its_cwd(start_master, tmp_path):
    """The spawner ignores SIGINT, SIGTERM, ... (it must survive a Ctrl-C to the foreground
    group); an ignored signal survives exec, so the child must get every one back."""
    (tmp_path / "work").mkdir()
    master = start_master("""
        [workers.w]
        command = "sleep 1000"
        cwd = "work"
    """)
    pid = master.wait_running(1)["w"]
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    # glibc's posix_spawn leaves its two internal signals (32, 33: thread cancellation and
    # setxid) ignored in the child; glibc installs its handlers for them when it needs them.
    internal = (1 << 31) | (1 << 32)
    assert int(status["SigIgn"], 16) & ~internal == 0 and int(status["SigBlk"], 16) == 0, status
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path / "work")
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    master.proc.send_signal(signal.SIGINT)  # what a Ctrl-C sends the foreground group: a clean stop
    assert master.proc.wait(15) == 0 and not alive(pid)


def test_tree_usage_still_reads_a_tree_when_the_master_is_out_of_fds(tmp_path):
    """The sampler keeps two /proc fds per instance; with none left to open it reads each
    file and closes it, rather than report a live tree as 0 bytes (what `orch status` and
    the memory limits would then have believed)."""
    script = textwrap.dedent("""
        import os, resource, subprocess, sys
        from orchestrator.procfs import TreeSampler
        child = subprocess.Popen(["sleep", "30"])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        os.close(held.pop())  # one free fd: enough for a read, not for two kept open
        sampler = TreeSampler()
        sampler.track(child.pid)
        rss, ticks, count = sampler.usage(os.getpid())
        child.kill()
        print(rss, count)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rss, count = map(int, out.stdout.split())
    assert count == 2 and rss > 1_000_000, out.stdout  # this interpreter and its sleep
