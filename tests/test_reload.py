"""Live reload by diff, with real masters: only what changed is touched."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from conftest import text_of, alive, orch, wait_for

FLEET = """
[workers.w]
command = "sleep {cmd}"
matrix = {{ n = {ns} }}
stop_timeout = "2s"
"""


def fleet(ns=range(20), cmd="10{{ n }}"):
    return FLEET.format(cmd=cmd, ns=json.dumps(list(ns)))


def changed(before: dict, after: dict) -> set:
    return {n for n in before if n in after and before[n] != after[n]}


def wait_settled(master, names: set, timeout: float = 5.0) -> dict:
    """Wait until exactly `names` run, each with a pid; return name -> pid."""
    def settled():
        rows = master.status()
        if set(rows) == names and all(r["state"] == "running" for r in rows.values()):
            return {n: r["pid"] for n, r in rows.items()}
        return None
    return wait_for(settled, timeout, message=f"the fleet to settle on {len(names)} instances")


def test_changing_one_instances_command_restarts_only_that_instance(start_master):
    master = start_master(fleet())
    before = master.wait_running(20)
    master.write(fleet(cmd="{{ '999' if n == 7 else '10' ~ n }}"))
    after = wait_for(lambda: (p := master.pids())["w-7"] not in (None, before["w-7"]) and p, 5,
                     message="w-7 to restart")
    after = wait_settled(master, set(before))
    assert changed(before, after) == {"w-7"}
    wait_for(lambda: psutil_cmdline(after["w-7"]) == ["sleep", "999"], message="the new command")


def psutil_cmdline(pid: int) -> list[str]:
    import psutil
    return psutil.Process(pid).cmdline()


def test_adding_and_removing_matrix_values_in_one_save(start_master):
    master = start_master(fleet(range(10)))
    before = master.wait_running(10)
    master.write(fleet([0, 1, 2, 3, 4, 5, 6, 7, 10, 11]), rename=False)  # in-place rewrite
    after = wait_settled(master, {f"w-{n}" for n in (0, 1, 2, 3, 4, 5, 6, 7, 10, 11)})
    assert not changed(before, after)
    assert not alive(before["w-8"]) and not alive(before["w-9"])


def test_bumping_replicas_starts_one_and_touches_no_other(start_master):
    config = """
        [workers.r]
        command = "sleep 1000"
        replicas = {n}
    """
    master = start_master(config.format(n=2))
    before = master.wait_running(2)
    master.write(config.format(n=3))
    after = wait_settled(master, {"r", "r-1", "r-2"})
    assert after["r"] == before["r"] and after["r-1"] == before["r-1"]
    master.write(config.format(n=2))
    after = wait_settled(master, {"r", "r-1"})
    assert after == before


def test_renaming_a_template_stops_the_old_and_starts_the_new(start_master):
    master = start_master("""
        [workers.old]
        command = "sleep 1000"
        [workers.keep]
        command = "sleep 1001"
    """)
    before = master.wait_running(2)
    master.write("""
        [workers.new]
        command = "sleep 1000"
        [workers.keep]
        command = "sleep 1001"
    """)
    after = wait_settled(master, {"new", "keep"})
    assert after["keep"] == before["keep"]
    assert not alive(before["old"])


def test_bad_saves_change_nothing_and_a_good_one_applies(start_master):
    master = start_master(fleet(range(3)))
    before = master.wait_running(3)
    master.write("[workers.w\ncommand = 'sleep 1'\n")  # invalid TOML
    wait_for(lambda: master.call("status")["last_reload_error"], message="the reload error")
    status = master.call("status")
    assert "TOML syntax error" in status["last_reload_error"] and ":1:" in status["last_reload_error"]
    master.write(fleet(range(3)).replace('stop_timeout = "2s"', 'stop_timeout = "2 fortnights"'))
    wait_for(lambda: "workers.w.stop_timeout" in (master.call("status")["last_reload_error"] or ""),
             message="the validation error")
    text = orch("status", "-c", str(master.config)).stdout
    assert "LAST RELOAD FAILED" in text and "workers.w.stop_timeout" in text
    assert master.pids() == before and master.proc.poll() is None
    master.write(fleet(range(4)))
    after = wait_settled(master, {"w-0", "w-1", "w-2", "w-3"})
    assert not changed(before, after)
    assert master.call("status")["last_reload_error"] is None


def test_a_save_with_zero_instances_is_refused(start_master):
    master = start_master(fleet(range(2)))
    before = master.wait_running(2)
    master.write("")
    wait_for(lambda: "no instances" in (master.call("status")["last_reload_error"] or ""), message="refusal")
    assert master.pids() == before


def test_a_policy_change_applies_in_place_without_a_restart(start_master):
    stubborn = json.dumps([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                           "signal.SIG_IGN); print('up', flush=True); time.sleep(1000)"])
    config = f"""
        [workers.s]
        command = {stubborn}
        stop_timeout = "{{t}}"
    """
    master = start_master(config.format(t="60s"))
    pid = master.wait_running(1)["s"]
    wait_for(lambda: "up" in text_of(master.log_dir / "s.log"), message="signal setup")
    master.write(config.format(t="300ms"))
    wait_for(lambda: master.call("status")["reloads"] == 1, message="the reload")
    assert master.pids()["s"] == pid
    began = time.monotonic()
    assert orch("stop", "s", "-c", str(master.config)).returncode == 0
    wait_for(lambda: not alive(pid), 5, message="the kill after the new stop_timeout")
    assert time.monotonic() - began < 5


def test_sighup_and_orch_reload_apply_when_watching_is_off(start_master):
    config = """
        [orchestrator]
        watch = false
        [workers.h]
        command = "sleep 1000"
        replicas = {n}
    """
    master = start_master(config.format(n=1))
    master.wait_running(1)
    master.write(config.format(n=2))
    time.sleep(0.3)  # proving a negative: the watcher is off, nothing may happen
    assert len(master.status()) == 1
    os.kill(master.pid, signal.SIGHUP)
    wait_settled(master, {"h", "h-1"})
    master.write(config.format(n=3))
    result = orch("reload", "-c", str(master.config))
    assert result.returncode == 0 and "1 started" in result.stdout
    wait_settled(master, {"h", "h-1", "h-2"})


def test_diff_shows_what_a_reload_would_do_without_doing_it(start_master):
    unwatched = "[orchestrator]\nwatch = false\n"
    master = start_master(unwatched + fleet(range(3)))
    before = master.wait_running(3)
    master.config.write_text(unwatched + fleet([1, 2, 3], cmd="{{ '77' if n == 2 else '10' ~ n }}"))
    result = orch("diff", "-c", str(master.config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "+ w-3" in lines and "- w-0" in lines and "~ w-2 (argv)" in lines
    assert orch("plan", "--diff", "-c", str(master.config)).stdout == result.stdout
    assert master.pids() == before


def test_rolling_restart_keeps_all_but_max_unavailable_running(start_master):
    config = """
        [workers.roll]
        command = "sleep {t}"
        replicas = 4
        rolling = true
        max_unavailable = 1
        min_uptime = "200ms"
    """
    master = start_master(config.format(t=1000))
    before = master.wait_running(4)
    master.write(config.format(t=2000))
    worst = 4
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = master.status()
        up = sum(1 for r in rows.values() if r["state"] == "running")
        worst = min(worst, up)
        if all(r["pid"] and r["pid"] != before[n] and r["state"] == "running" for n, r in rows.items()):
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the rollout did not finish")
    assert worst >= 3
    wait_for(lambda: all(psutil_cmdline(pid) == ["sleep", "2000"] for pid in master.pids().values()),
             message="every replica to run the new command")


def test_a_reload_during_a_reload_is_queued_and_applies_the_newest_file(start_master):
    stubborn = json.dumps([sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, "
                           "signal.SIG_IGN); print('up', flush=True); time.sleep(1000)"])
    config = "[workers.slow]\ncommand = " + stubborn.replace("{", "{{").replace("}", "}}") + """
        env = {{ V = "{v}" }}
        stop_timeout = "1s"
        [workers.fast]
        command = "sleep 1000"
        replicas = {n}
    """
    master = start_master(config.format(v=1, n=1))
    before = master.wait_running(2)
    wait_for(lambda: "up" in text_of(master.log_dir / "slow.log"), message="signal setup")
    master.write(config.format(v=2, n=1))   # slow restart: takes stop_timeout
    wait_for(lambda: master.status()["slow"]["state"] == "stopping", message="the slow stop")
    master.write(config.format(v=2, n=2))   # arrives while the first is applied
    master.write(config.format(v=2, n=3))   # the newest file wins
    after = wait_settled(master, {"slow", "fast", "fast-1", "fast-2"}, timeout=6)
    assert after["slow"] != before["slow"]
    assert "queued" in master.stderr()


def test_a_save_queued_behind_a_reload_is_not_applied_again_when_the_file_is_unchanged(start_master):
    """A save that waited for a slow reload, of the very file that reload read, changes
    nothing: it is not applied a second time (at 5,000 instances that is a whole reload)."""
    stubborn = json.dumps([sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, "
                           "signal.SIG_IGN); print('up', flush=True); time.sleep(1000)"])
    config = "[workers.slow]\ncommand = " + stubborn.replace("{", "{{").replace("}", "}}") + """
        env = {{ V = "{v}" }}
        stop_timeout = "1s"
    """
    master = start_master(config.format(v=1))
    master.wait_running(1)
    wait_for(lambda: "up" in text_of(master.log_dir / "slow.log"), message="signal setup")
    master.write(config.format(v=2))   # slow restart: takes stop_timeout
    wait_for(lambda: master.status()["slow"]["state"] == "stopping", message="the slow stop")
    reloads = master.call("status")["reloads"]
    master.write(config.format(v=2))   # the same content again, saved while the reload is applied
    wait_for(lambda: "queued" in master.stderr(), message="the second save to be queued")
    wait_for(lambda: master.status()["slow"]["state"] == "running", timeout=6, message="the restart")
    time.sleep(0.5)  # the queued save is looked at as soon as the restart is done
    assert master.call("status")["reloads"] == reloads
    assert "reload (file" in master.stderr() and "queued): +" not in master.stderr()


def test_a_stopped_instance_stays_stopped_across_reloads(start_master):
    config = """
        [workers.s]
        command = "sleep 1000"
        replicas = {n}
        min_uptime = "1s"  # start and restart wait this long (5 s by default)
    """
    master = start_master(config.format(n=2))
    master.wait_running(2)
    assert orch("stop", "s-1", "-c", str(master.config)).returncode == 0
    wait_for(lambda: master.status()["s-1"]["state"] == "stopped", message="the stop")
    master.write(config.format(n=3))
    wait_for(lambda: master.status().get("s-2", {}).get("state") == "running", message="the new replica")
    assert master.status()["s-1"]["state"] == "stopped"
    assert orch("start", "s-1", "-c", str(master.config)).returncode == 0
    wait_for(lambda: master.status()["s-1"]["state"] == "running", message="the start")


def test_global_settings_apply_live_on_save(start_master):
    config = """
        [orchestrator]
        graceful_timeout = "{g}"
        control_socket = "{sock}"
        [workers.g]
        command = "sleep 1000"
    """
    master = start_master(config.format(g="10s", sock=".orch/workers/orch.sock"))
    pid = master.wait_running(1)["g"]
    master.write(config.format(g="3s", sock=".orch/workers/other.sock"))
    wait_for(lambda: "setting orchestrator.control_socket" in master.stderr(), message="the socket moved")
    err = master.stderr()
    assert "setting orchestrator.graceful_timeout: 10.0 -> 3.0" in err
    assert "takes effect only after a restart" not in err
    wait_for(lambda: not master.socket.exists(), message="the old socket closed")  # moved (issue 30)
    assert orch("status", "-c", str(master.config)).returncode == 0
    assert orch("status", "--json", "-c", str(master.config)).stdout.count(str(pid)) == 1  # untouched


def test_included_files_are_watched_and_their_errors_located(start_master, tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "a.toml").write_text('[workers.a]\ncommand = "sleep 1001"\n')
    master = start_master("""
        [orchestrator]
        include = ["conf.d/*.toml"]
        [vars]
        base = 2000
        [workers.main]
        command = "sleep 1000"
    """)
    before = master.wait_running(2)
    new = conf / ".b.toml.tmp"
    new.write_text('[vars]\nextra = 7\n[workers.b]\ncommand = "sleep {{ base + extra }}"\n')
    os.replace(new, conf / "b.toml")                          # a new included file
    after = wait_settled(master, {"main", "a", "b"})
    assert after["main"] == before["main"] and after["a"] == before["a"]
    wait_for(lambda: psutil_cmdline(after["b"]) == ["sleep", "2007"], message="b's command")
    (conf / "a.toml").write_text('[workers.a]\ncommand = "sleep 1002"\n')   # an edit in place
    wait_for(lambda: master.pids()["a"] not in (None, after["a"]), message="a to restart")
    (conf / "b.toml").write_text('[workers.b]\ncommand = "sleep 1"\nreplicas = "x"\n')
    error = wait_for(lambda: master.call("status")["last_reload_error"], message="the error")
    assert f"{conf / 'b.toml'}:3: workers.b.replicas" in error
    (conf / "b.toml").write_text('[workers.main]\ncommand = "sleep 1"\n')
    wait_for(lambda: "also defined in" in (master.call("status")["last_reload_error"] or ""),
             message="the duplicate template error")
    assert master.pids()["main"] == before["main"]


def test_a_reload_stops_what_it_removes_before_it_starts_what_it_adds(start_master):
    """The spawner handles the master's messages in order: a stop sent after a batch of
    spawns waited for all of them. Stops now go first, so an instance removed in the same
    save as 300 added ones is stopped before the added ones have all started."""
    master = start_master("""
        [workers.old]
        command = ["sleep", "60"]
        """)
    old = master.wait_running(1)["old"]
    master.write("""
        [workers.new]
        command = ["sleep", "60"]
        replicas = 300
        """)
    os.kill(master.pid, signal.SIGHUP)
    master.wait_running(300, timeout=30)
    lines = master.stderr().splitlines()
    stopped = next(i for i, line in enumerate(lines) if f"old[{old}] stopped" in line)
    started = [i for i, line in enumerate(lines) if "] started" in line and line.split()[4].startswith("new")]
    assert len(started) == 300
    assert stopped < started[-1], "the removed instance was stopped only after every added one started"
