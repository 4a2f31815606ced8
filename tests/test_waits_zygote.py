"""`orch start`/`restart` wait until the new process has started (up `min_uptime`, or
READY=1), and a preload zygote whose import failed is rebuilt, with fresh import caches,
on the next start: real masters, real children."""

from __future__ import annotations

import pytest

import json
import os
import sys
import time

from conftest import orch, wait_for
from orchestrator.supervise.states import State

PY = sys.executable

# Up long enough for a wait that took "spawned" for "started" to see it running.
DIES = "import sys, time; time.sleep(0.2); sys.exit(3)"
SAYS_READY = ("import os, socket, time; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)"
              ".sendto(b'READY=1', os.environ['NOTIFY_SOCKET']); time.sleep(1000)")


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def timed(master, *args: str):
    began = time.monotonic()
    result = orch(*args, "-c", str(master.config))
    return result, time.monotonic() - began


def test_start_and_restart_of_a_command_that_dies_at_once_exit_1_with_its_exit(start_master):
    master = start_master(f"""
        [workers.dies]
        command = {json.dumps([PY, "-c", DIES])}
        min_uptime = "3s"  # from the fork: a loaded machine's interpreter start can outlast 1 s
        backoff = {{ initial = "5s", max = "60s" }}
    """)
    backing_off = (State.BACKOFF.value, State.CRASHLOOP.value)  # both say: dead, restart pending
    wait_for(lambda: master.status()["dies"]["state"] in backing_off, 10, message="the first backoff")
    for verb in ("start", "restart"):
        result, elapsed = timed(master, verb, "dies")
        assert result.returncode == 1, (verb, result)
        assert "dies is backoff (exit 3)" in result.stderr or "dies is crash-looping (exit 3)" in result.stderr, \
            (verb, result.stderr)
        assert elapsed < 10, (verb, elapsed)
    assert orch("stop", "dies", "-c", str(master.config)).returncode == 0
    result, elapsed = timed(master, "start", "dies")
    assert result.returncode == 1 and "(exit 3)" in result.stderr and elapsed < 10, result


def test_start_and_restart_return_once_the_process_is_up_min_uptime_or_ready(start_master):
    master = start_master(f"""
        [workers.steady]
        command = "sleep 1000"
        min_uptime = "500ms"
        [workers.notify]
        command = {json.dumps([PY, "-c", SAYS_READY])}
        min_uptime = "30s"
    """)
    master.wait_running(2)
    assert orch("stop", "steady", "-c", str(master.config)).returncode == 0
    result, elapsed = timed(master, "start", "steady")
    row = master.status()["steady"]
    assert result.returncode == 0, result
    assert row["state"] == "running" and row["uptime"] >= 0.5 and elapsed >= 0.5, row

    old = row["pid"]
    result, elapsed = timed(master, "restart", "steady")
    row = master.status()["steady"]
    assert result.returncode == 0, result
    assert row["state"] == "running" and row["pid"] not in (old, None) and row["uptime"] >= 0.5, row

    # READY=1 counts as started long before min_uptime (30 s) is over.
    old = master.status()["notify"]["pid"]
    result, elapsed = timed(master, "restart", "notify")
    row = master.status()["notify"]
    assert result.returncode == 0 and elapsed < 15, (result, elapsed)
    assert row["pid"] not in (old, None) and row["ready"], row


WORKER = """
{imports}
from orchestrator.worker import Worker

class Idle(Worker):
    def run(self):
        time.sleep(0.05)
        return False
"""


def test_a_preload_zygote_whose_import_failed_is_rebuilt_by_restart_and_by_backoff(
        start_master, tmp_path, monkeypatch):
    # `vendor` is on the master's sys.path but does not exist yet: the spawner, walking past
    # it for its own imports, cached "no such folder", and every zygote it forked inherited that.
    vendor = tmp_path / "vendor"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(vendor)])))
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "one.py").write_text(WORKER.format(imports="import time, vendordep"))
    (app / "two.py").write_text("raise ImportError('two is broken')\n")
    master = start_master("""
        [workers.viarestart]
        target = "app.one:Idle"
        preload = true
        min_uptime = "300ms"
        backoff = { initial = "60s", max = "60s" }
        [workers.viabackoff]
        target = "app.two:Idle"
        preload = true
        min_uptime = "300ms"
        backoff = { initial = "100ms", max = "300ms" }
    """)

    def failed(name: str, text: str) -> bool:
        row = master.status()[name]
        return row["state"] in (State.BACKOFF.value, State.CRASHLOOP.value) and text in (row["last_exit"] or "")
    # viabackoff's 300 ms backoff alternates with its next failing start: its last exit is
    # what stays (a loaded machine may show it starting at every look).
    wait_for(lambda: failed("viarestart", "vendordep")
             and "two is broken" in (master.status()["viabackoff"]["last_exit"] or ""), 10,
             message="both imports to fail")

    vendor.mkdir()
    (vendor / "vendordep.py").write_text("VALUE = 1\n")
    (app / "two.py").write_text(WORKER.format(imports="import time, vendordep"))

    # The next backoff attempt imports the fixed module in a new zygote.
    wait_for(lambda: (row := master.status()["viabackoff"])["state"] == "running" and row["ready"],
             10, message="viabackoff up from its backoff")
    assert failed("viarestart", "vendordep")  # for 60 s: only the restart brings it up
    result, elapsed = timed(master, "restart", "template:viarestart")
    assert result.returncode == 0 and elapsed < 15, (result, elapsed)
    row = master.status()["viarestart"]
    assert row["state"] == "running" and row["ready"], row  # the runtime says READY=1 after init()


class _Inst:
    def __init__(self, state: str, pid: int | None, ready: bool = False):
        from orchestrator.supervise.states import State
        self.state, self.pid, self.ready = State(state), pid, ready
        self.last_reason = self.last_exit = None
        self.spec, self.probes = type("Spec", (), {"probes": ()})(), None  # no probes: min_uptime counts


def test_ready_goals_count_min_uptime_and_say_what_they_wait_for():
    from orchestrator.control.waits import Goal, check, describe
    assert check(Goal("a", "ready", old_pid=7), _Inst("running", 8)) == (False, None)
    assert check(Goal("a", "ready", old_pid=7), _Inst("running", 8), up=True) == (True, None)
    assert check(Goal("a", "ready"), _Inst("running", 8, ready=True)) == (True, None)
    assert check(Goal("a", "ready", old_pid=8), _Inst("running", 8), up=True) == (False, None)
    assert check(Goal("a", "ready"), _Inst("starting", None), up=True) == (False, None)
    assert "not ready" in describe(Goal("a", "ready"), _Inst("running", 8))
    assert describe(Goal("a", "ready", old_pid=8), _Inst("running", 8)) == "a still runs its old process"
