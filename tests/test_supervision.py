"""Real masters, real children, real signals: start, replace, back off, stop, leave nothing."""

from __future__ import annotations

import json
import os
import signal
import sys

import psutil

from conftest import Master, text_of, alive, orch, wait_for
from orchestrator.supervise.states import State

PY = sys.executable
# A TOML `command = [...]` line for a child that ignores SIGTERM.
IGNORES_TERM = "command = " + json.dumps([PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                          "signal.SIG_IGN); print('up', flush=True); time.sleep(1000)"])

MATRIX = """
[orchestrator]
graceful_timeout = "5s"
[vars]
queues = ["q1", "q2"]
[workers.consumer]
command = "sleep {{ 1000 + loop_index | default(0) }}"
matrix = { ip = ["10.0.0.1", "10.0.0.2"], queue = "{{ queues }}" }
replicas = 2
"""


def test_matrix_with_replicas_brings_up_every_combination(start_master):
    master = start_master(MATRIX.replace("{{ 1000 + loop_index | default(0) }}", "100{{ replica }}"))
    running = master.wait_running(8)
    assert set(running) == {f"consumer-10.0.0.{i}-q{q}{r}" for i in (1, 2) for q in (1, 2) for r in ("", "-1")}
    for pid in running.values():
        proc = psutil.Process(pid)
        assert proc.name() == "sleep"
        assert os.getpgid(pid) == pid, "each child leads its own process group"


def test_a_killed_child_is_replaced_within_a_second(start_master):
    master = start_master("""
        [workers.w]
        command = "sleep 1000"
        replicas = 2
    """)
    before = master.wait_running(2)
    os.kill(before["w"], signal.SIGKILL)

    def replaced():
        row = master.status()["w"]
        return row["state"] == "running" and row["pid"] != before["w"] and row
    row = wait_for(replaced, 1.0, message="a replacement")
    assert row["restarts"] == 1 and row["last_exit"] == "SIGKILL"
    assert master.status()["w-1"]["pid"] == before["w-1"]


def test_sigterm_on_the_master_leaves_no_process_of_the_tree(start_master):
    master = start_master("""
        [workers.tree]
        command = "sh -c 'sleep 1000 & sleep 1000 & wait'"
        replicas = 3
    """)
    master.wait_running(3)
    wait_for(lambda: len(master.descendants()) >= 1 + 3 * 3, 10, message="grandchildren")
    tree = master.descendants()
    assert master.terminate() == 0
    wait_for(lambda: not any(alive(p.pid) for p in tree), 10, message="the whole tree to be gone")


def test_sigkill_on_the_master_takes_every_child_down(start_master):
    master = start_master(f"""
        [workers.plain]
        command = "sleep 1000"
        replicas = 2
        [workers.stubborn]
        {IGNORES_TERM}
        [workers.tree]
        command = "sh -c 'sleep 1000 & sleep 1000 & wait'"
    """)
    master.wait_running(4)
    wait_for(lambda: len(master.descendants()) >= 1 + 4 + 2, 10, message="grandchildren")
    tree = master.descendants()
    master.proc.kill()
    master.proc.wait(5)
    wait_for(lambda: not any(alive(p.pid) for p in tree), 10, message="every child to die with the master")


def test_a_child_that_ignores_sigterm_is_killed_after_stop_timeout(start_master, tmp_path):
    master = start_master(f"""
        [workers.stubborn]
        {IGNORES_TERM}
        stop_timeout = "0.5s"
    """)
    pid = master.wait_running(1)["stubborn"]
    wait_for(lambda: "up" in text_of(master.log_dir / "stubborn.log"), message="the child's signal setup")
    master.proc.send_signal(signal.SIGTERM)
    assert master.proc.wait(5) == 0
    assert not alive(pid)
    assert "did not stop within 0.5s" in master.stderr()


def test_early_failures_back_off_then_show_as_crash_looping(start_master):
    master = start_master("""
        [workers.flaky]
        command = "sh -c 'exit 3'"
        backoff = { initial = "50ms", max = "200ms" }
        min_uptime = "5s"
    """)
    # crash-looping lasts 200 ms a round, between starts a loaded machine may stretch to a
    # second: wait on the journal's crashloop event, which stays, not on the state.
    events = wait_for(lambda: [e for e in master.call("events", patterns=["flaky"])["events"]
                               if e["kind"] == "crashloop"], 5, message="a crashloop event")
    assert events[0]["new"] == State.CRASHLOOP.value and events[0]["code"] == 3, events[0]
    row = master.status()["flaky"]
    assert row["restarts"] >= 3 and row["last_exit"] == "exit 3"
    restarts = row["restarts"]
    wait_for(lambda: master.status()["flaky"]["restarts"] > restarts + 1, 3,
             message="retries to go on at the maximum delay")


def test_restart_never_leaves_the_instance_exited(start_master):
    master = start_master("""
        [workers.once]
        command = "true"
        restart = "never"
        [workers.onfail]
        command = "true"
        restart = "on-failure"
    """)
    wait_for(lambda: all(r["state"] == "exited" for r in master.status().values()), message="exited")
    assert all(r["restarts"] == 0 and r["last_exit"] == "exit 0" for r in master.status().values())


def test_a_command_that_cannot_start_is_reported(start_master):
    master = start_master("""
        [workers.missing]
        command = "/nonexistent/binary --flag"
        backoff = { initial = "1s", max = "5s" }
    """)
    row = wait_for(lambda: (r := master.status()["missing"])["last_exit"] and r, message="the failed exec")
    assert row["last_exit"] == "exit 127"
    assert "No such file" in master.stderr()


def test_children_get_stdin_from_dev_null_and_the_config_env(start_master, tmp_path):
    master = start_master("""
        [workers.envy]
        command = "sh -c 'echo host=$REDIS_HOST inst=$ORCH_INSTANCE; read x || echo stdin-eof; sleep 1000'"
        env = { REDIS_HOST = "{{ template }}.local" }
    """)
    master.wait_running(1)
    log = master.log_dir / "envy.log"
    wait_for(lambda: log.exists() and "stdin-eof" in log.read_text(), message="output in the log")
    assert "host=envy.local inst=envy" in log.read_text()


def test_a_second_master_on_the_same_config_refuses(start_master, tmp_path):
    master = start_master("""
        [workers.one]
        command = "sleep 1000"
    """)
    pid = master.wait_running(1)["one"]
    result = orch("up", "-c", str(master.config), timeout=10)
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert master.status()["one"]["pid"] == pid


def test_down_returns_when_everything_is_gone(start_master):
    master = start_master("""
        [workers.w]
        command = "sleep 1000"
        replicas = 3
    """)
    pids = master.wait_running(3).values()
    result = orch("down", "-c", str(master.config), timeout=20)
    assert result.returncode == 0, result.stderr
    assert not alive(master.pid) or master.proc.poll() is not None
    assert master.proc.wait(5) == 0
    assert not any(alive(pid) for pid in pids)


def test_client_commands_say_when_no_master_runs(tmp_path):
    (tmp_path / "workers.toml").write_text('[workers.a]\ncommand = "true"\n')
    for command in ("status", "reload", "down", "diff"):
        result = orch(command, cwd=tmp_path, timeout=10)
        assert result.returncode == 3, (command, result.stderr)
        assert "no orch master is running" in result.stderr


def test_a_bad_config_starts_nothing_and_exits_2(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[workers.a]\ncomand = "sleep 1"\n')
    result = orch("up", "-c", str(config), timeout=10)
    assert result.returncode == 2
    lines = result.stderr.splitlines()  # in line order: the table's own problem (line 1) first
    assert any(f"{config}:2:" in line and "workers.a.comand" in line and "did you mean 'command'" in line
               for line in lines), lines
    assert not (Master.folder_of(config) / "orch.pid").exists()


def test_a_killed_spawner_is_replaced_and_the_fleet_comes_back(start_master):
    master = start_master("""
        [workers.w]
        command = "sleep 1000"
        replicas = 3
    """)
    before = master.wait_running(3)
    spawner = next(p for p in master.descendants() if "spawner" in " ".join(p.cmdline()))
    os.kill(spawner.pid, signal.SIGKILL)
    # An upper bound, not a target: under a load average over 100 the guard took over 3 s.
    wait_for(lambda: not any(alive(pid) for pid in before.values()), 10, message="the old fleet to die")

    def back():
        rows = master.status()
        fresh = all(r["state"] == "running" and r["pid"] not in before.values() for r in rows.values())
        return fresh and rows
    rows = wait_for(back, 10, message="the fleet to come back")
    assert all(r["restarts"] == 1 for r in rows.values())
    assert master.proc.poll() is None and "spawner (pid" in master.stderr()
    master.terminate()
    assert not any(alive(r["pid"]) for r in rows.values())


def test_sigquit_kills_everything_at_once(start_master):
    master = start_master(f"""
        [workers.stubborn]
        {IGNORES_TERM}
        stop_timeout = "30s"
    """)
    pid = master.wait_running(1)["stubborn"]
    # Only a child that ignores SIGTERM shows that SIGQUIT does not wait out stop_timeout.
    wait_for(lambda: "up" in text_of(master.log_dir / "stubborn.log"), message="the child's signal setup")
    master.proc.send_signal(signal.SIGQUIT)
    assert master.proc.wait(5) == 0
    assert not alive(pid)


def test_config_option_is_accepted_after_other_arguments(start_master):
    master = start_master("""
        [workers.c]
        command = "sleep 1000"
    """)
    master.wait_running(1)
    result = orch("status", "c", "--json", "-c", str(master.config))
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout)] == ["c"]
    assert orch("-c", str(master.config), "status", "c").returncode == 0
