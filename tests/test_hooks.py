"""Hooks (issue 29): [[hooks]] run through the spawner on events, throttled per instance and
kind, with the event in their env and the instance's last log lines on stdin, killed at
their timeout; real masters and processes, and the throttle on a fake clock."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import alive, orch, wait_for

from orchestrator.config.hooks import HookDecl
from orchestrator.loop import EventLoop
from orchestrator.supervise.hooks import Hooks, hook_env, tail_lines
from orchestrator.supervise.journal import Journal
from orchestrator.supervise.probe_exec import ExecProbes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_storm_of_1000_crashes_runs_a_hook_once_per_throttle_window_per_instance(tmp_path):
    clock = Clock()
    loop = EventLoop(clock)
    journal = Journal()
    hook = HookDecl(on=("exited",), command=("notify", "{{ instance }}"), throttle=300.0)
    hooks = Hooks(loop, journal, lambda: (hook,), ExecProbes(lambda: None), lambda: tmp_path, lambda: tmp_path)
    ran: list[tuple[float, str]] = []
    hooks._run = lambda h, rec: ran.append((clock.now, rec["instance"]))  # the runner, not the throttle
    for i in range(1000):  # 1,000 crashes of three instances over ten minutes
        clock.now = 1000.0 + i * 0.6
        journal.record("exited", f"web-{i % 3}", "web", code=1)
        journal.record("started", f"web-{i % 3}", "web")  # another kind: not this hook's
    per_instance = {name: [t for t, n in ran if n == name] for name in ("web-0", "web-1", "web-2")}
    for name, times in per_instance.items():
        assert len(times) == 2, (name, times)  # t = 0 and once the 5 minutes passed
        assert times[1] - times[0] >= 300.0
    journal.record("reload_failed", error="x")  # no instance: throttled per kind alone
    assert len(ran) == 6
    loop.close()


def test_the_hook_environment_and_the_log_tail():
    env = hook_env({"ts": 1.0, "seq": 3, "kind": "exited", "instance": "web-1", "template": "web",
                    "exit": "SIGKILL", "code": None, "signal": "SIGKILL", "reason": None, "pid": 42})
    assert env["ORCH_EVENT"] == "exited" and env["ORCH_INSTANCE"] == "web-1" and env["ORCH_TEMPLATE"] == "web"
    assert env["ORCH_EXIT"] == "SIGKILL" and env["ORCH_SIGNAL"] == "SIGKILL" and env["ORCH_PID"] == "42"
    assert env["ORCH_REASON"] == "" and "ORCH_EXIT_CODE" not in env
    assert hook_env({"kind": "limit", "limit": "memory_hard"})["ORCH_REASON"] == "memory_hard"


def test_tail_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(100)))
    assert tail_lines(log, 20, 16384).splitlines() == [b"line %d" % i for i in range(80, 100)]
    assert tail_lines(log, 20, 30).splitlines() == [b"line 97", b"line 98", b"line 99"]  # cut line dropped
    assert tail_lines(tmp_path / "none.log", 20, 100) == b""


CRASHLOOP = """
[workers.crash]
command = ["sh", "-c", "echo boom-$$; echo stderr-too >&2; exit 3"]
min_uptime = "5s"
backoff = {{ initial = "0.01s", max = "0.02s" }}

[[hooks]]
on = ["crashloop"]
command = ["sh", "-c", "env | grep ^ORCH_ | sort > {out}/env.$$; cat > {out}/stdin.$$; echo {{{{ event }}}}:{{{{ code }}}} > {out}/argv.$$"]
throttle = "1h"

[[hooks]]
on = ["exited"]
command = ["sh", "-c", 'echo "$ORCH_EVENT_JSON" >> {out}/exited']
throttle = "1s"
"""


def _files(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(prefix + ".*"))


@pytest.mark.slow
def test_a_crash_loop_runs_one_hook_per_throttle_window_with_its_facts(start_master, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    master = start_master(CRASHLOOP.format(out=out))
    began = time.monotonic()
    wait_for(lambda: master.status()["crash"]["restarts"] >= 30, 20, message="30 crashes")
    wait_for(lambda: _files(out, "argv"), 10, message="the crashloop hook")
    wait_for(lambda: time.monotonic() - began > 3.5, 5)
    restarts = master.status()["crash"]["restarts"]
    master.call("stop", patterns=["crash"])
    elapsed = time.monotonic() - began
    # crashloop, throttle 1h: exactly one run however many crashes
    assert len(_files(out, "argv")) == 1, _files(out, "argv")
    pid = _files(out, "argv")[0].suffix[1:]
    assert (out / f"argv.{pid}").read_text() == "crashloop:3\n"
    env = dict(line.split("=", 1) for line in (out / f"env.{pid}").read_text().splitlines())
    assert env["ORCH_EVENT"] == "crashloop" and env["ORCH_INSTANCE"] == "crash" and env["ORCH_TEMPLATE"] == "crash"
    assert env["ORCH_EXIT"] == "exit 3" and env["ORCH_EXIT_CODE"] == "3" and env["ORCH_REASON"] == "exit 3"
    stdin = (out / f"stdin.{pid}").read_text().splitlines()
    assert 0 < len(stdin) <= 20 and all(line.startswith("boom-") or line == "stderr-too" for line in stdin), stdin
    # exited, throttle 1s: one run per second of the storm, never two within a second
    runs = [json.loads(line)["ts"] for line in (out / "exited").read_text().splitlines()]  # the master's time
    print(f"{restarts} crashes in {elapsed:.1f}s: {len(runs)} runs of the 1s-throttled hook")
    assert restarts >= 30 and 2 <= len(runs) <= elapsed + 1, (restarts, runs)
    assert all(b - a >= 0.99 for a, b in zip(runs, runs[1:])), runs


HANGING = """
[workers.web]
command = ["sleep", "1000"]

[[hooks]]
on = ["started"]
command = ["sh", "-c", "sleep 1000 & echo $! > {out}/child; echo $$ > {out}/hook; wait"]
timeout = "0.5s"

[[hooks]]
on = ["started"]
command = ["sh", "-c", "echo hook-says-hi; exit 1"]

[[hooks]]
on = ["started"]
command = ["no-such-program-here"]

[[hooks]]
on = ["reload_failed"]
command = ["sh", "-c", 'echo "$ORCH_EVENT $ORCH_REASON" > {out}/reload']
"""


def test_a_hanging_hook_is_killed_at_its_timeout_and_the_master_stays_responsive(start_master, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    master = start_master(HANGING.format(out=out))
    wait_for(lambda: all((out / f).exists() and (out / f).read_text().strip() for f in ("hook", "child")),
             10, message="the hook to start")
    hook, child = int((out / "hook").read_text()), int((out / "child").read_text())
    before = time.monotonic()
    master.call("ping")
    assert time.monotonic() - before < 0.5, "the master answers while its hook hangs"
    wait_for(lambda: not alive(hook) and not alive(child), 5, message="the hook's process group killed")
    wait_for(lambda: "timed out after 0.5s: killed" in master.stderr(), 5, message="the timeout logged")
    wait_for(lambda: "hook 1 (sh) for web started failed (exit 1)" in master.stderr(), 5)
    assert "hook-says-hi" in master.stderr(), "a hook's output goes to the master's stderr"
    wait_for(lambda: "no-such-program-here: command not found" in master.stderr(), 5)
    log = master.stderr()
    assert log.count("timed out after 0.5s") == 1 and log.count("failed (exit 1)") == 1
    assert "Traceback" not in log
    assert master.status()["web"]["state"] == "running"
    # a fleet-wide event: the located error reaches the hook
    master.write(HANGING.format(out=out) + "\n[workers.bad]\ncommand = 3\n")
    with pytest.raises(RuntimeError):
        master.call("reload")
    said = wait_for(lambda: (out / "reload").exists() and (out / "reload").read_text(), 10)
    assert said.startswith("reload_failed ") and "workers.bad.command" in said and "workers.toml:" in said


def test_a_hook_config_error_is_located(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[workers.a]\ncommand = ["true"]\n\n[[hooks]]\non = ["exited"]\ncommand = ["x"]\n\n'
                      '[[hooks]]\non = ["crashlop"]\ncommand = ["echo", "{{ instance"]\n')
    result = orch("check", "-c", str(config), timeout=20)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].endswith("workers.toml:9: hooks.1.on: unknown event kind 'crashlop'; one of: started, "
                             "exited, stopped, crashloop, limit, probe_failed, reload, reload_failed, scaled, "
                             "spawner_replaced, state"), lines
    assert "workers.toml:10: hooks.1.command: item 1: Jinja syntax error" in lines[1], lines
