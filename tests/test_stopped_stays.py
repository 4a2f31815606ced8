"""Stopped stays stopped (issue 30): what `orch stop` held survives a restart of the master,
clean or by SIGKILL, through the state file, until `orch start`; `orch up --fresh` forgets it."""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import wait_for

CONFIG = """
    [workers.w]
    command = "sleep 1000"
    replicas = 3
    min_uptime = "0.2s"
"""


def _states(master) -> dict[str, str]:
    return {name: row["state"] for name, row in master.status().items()}


@pytest.mark.slow
def test_stopped_instances_stay_stopped_across_master_restarts(start_master):
    master = start_master(CONFIG)
    master.wait_running(3)
    master.call("stop", patterns=["w-2"], wait=True, timeout=10)
    assert _states(master)["w-2"] == "stopped"
    assert master.terminate() == 0
    state = json.loads((master.pidfile.parent / "orch.pid.state").read_text())
    assert state["stopped"] == ["w-2"], state

    again = start_master(CONFIG)
    wait_for(lambda: _states(again) == {"w": "running", "w-1": "running", "w-2": "stopped"},
             message="w-2 still stopped after a clean restart")
    assert again.pids()["w-2"] is None
    assert again.status()["w-2"]["held"], "orch status shows it as held: (held)"
    assert "1 instances stay stopped, as `orch stop` left them" in again.stderr()

    # A master that dies by SIGKILL leaves its state file: the next one still knows.
    os.killpg(again.pid, signal.SIGKILL)
    again.proc.wait(5)
    third = start_master(CONFIG)
    wait_for(lambda: _states(third) == {"w": "running", "w-1": "running", "w-2": "stopped"},
             message="w-2 still stopped after a SIGKILLed master")

    third.call("start", patterns=["w-2"], wait=True, timeout=10)
    assert third.terminate() == 0
    assert not (master.pidfile.parent / "orch.pid.state").exists(), "nothing held: no state file left"
    fourth = start_master(CONFIG)
    fourth.wait_running(3)


@pytest.mark.slow
def test_up_fresh_forgets_the_stopped_instances(start_master):
    master = start_master(CONFIG)
    master.wait_running(3)
    master.call("stop", patterns=["w", "w-1"], wait=True, timeout=10)
    assert master.terminate() == 0
    fresh = start_master(CONFIG, args=("--quiet", "--fresh"))
    fresh.wait_running(3)
    assert fresh.terminate() == 0
    assert not (master.pidfile.parent / "orch.pid.state").exists()
