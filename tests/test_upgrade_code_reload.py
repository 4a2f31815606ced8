"""`orch upgrade` (SIGUSR2) while `orch reload --code` rolls preloaded workers onto a fresh
zygote (issue 30): the roll crosses the exec and goes on under the new master, each instance
rolled exactly once onto the new code, and the old zygote goes with its last worker. Real
masters, a copy of the package with another version first on PYTHONPATH."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import text_of, wait_for
from test_code_reload import _zygotes
from test_upgrade import package_copy, set_version

PY = sys.executable

# Each process says which code its zygote imported. A v2 process after the first waits in
# init() (so it is not ready: no READY=1) until the test opens the gate: the roll is held
# mid-way, one instance already on the new code, for as long as the upgrade takes.
WORKER = '''import os, time
from orchestrator.worker import Worker
VERSION = "{version}"
HERE = os.path.dirname(os.path.abspath(__file__))


def _nth_start():
    n = 0
    while True:
        try:
            os.close(os.open(os.path.join(HERE, "v2-%d" % n), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return n
        except FileExistsError:
            n += 1


class W(Worker):
    def init(self):
        print("code", VERSION, os.getpid(), flush=True)
        if VERSION == "v2" and _nth_start() >= {hold_from}:
            while not os.path.exists(os.path.join(HERE, "go")):
                time.sleep(0.02)

    def run(self):
        time.sleep(0.05)
'''


def _config(tmp_path: Path) -> str:
    return f"""
        [orchestrator]
        watch = false
        [workers.w]
        target = "app:W"
        preload = true
        cwd = "{tmp_path}"
        replicas = 4
        max_unavailable = 1
        min_uptime = 600  # ready at READY=1 (after init) only
        stop_timeout = 5
        """


def _codes(master, names) -> dict[str, list[tuple[str, int]]]:
    """name -> the (version, pid) of each process its log says it ran."""
    return {name: [(v, int(pid)) for v, pid in re.findall(r"^code (v\d) (\d+)$", text_of(master.log_dir / f"{name}.log"),
                                                            re.M)] for name in names}


def _rolling(tmp_path: Path, monkeypatch, start_master, hold_from: int):
    """A master of 4 preloaded workers on v1 whose `orch reload --code` (waiting) is under
    way with one instance ready on v2 and the next held in its init until `go` exists."""
    tree = package_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tree))
    app = tmp_path / "app.py"
    app.write_text(WORKER.format(version="v1", hold_from=hold_from))
    master = start_master(_config(tmp_path))
    before = master.wait_running(4, timeout=30)
    wait_for(lambda: all(_codes(master, before)[n] == [("v1", pid)] for n, pid in before.items()), 10,
             message="every worker on v1")
    first = wait_for(lambda: len(z := _zygotes(master)) == 1 and z, 5, message="one zygote")
    app.write_text(WORKER.format(version="v2", hold_from=hold_from))
    reload = subprocess.Popen([PY, "-m", "orchestrator", "reload", "--code", "template:w", "-c", str(master.config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (r := master.call("status")["rollouts"]) and r[0]["done"] >= 1, 20,
             message="the roll onto the new code under way, one instance done")
    set_version(tree, "9.9.9")  # what `pip install -U` would have done
    return master, before, first, reload


@pytest.mark.slow
def test_sigusr2_mid_code_reload_carries_the_roll_onto_the_new_code(start_master, tmp_path, monkeypatch):
    master, before, first, reload = _rolling(tmp_path, monkeypatch, start_master, hold_from=1)
    try:
        rolling = master.call("status")["rollouts"]
        assert [r["label"] for r in rolling] == ["template:w onto new code"] and rolling[0]["done"] < 4, rolling
        os.kill(master.pid, signal.SIGUSR2)
        wait_for(lambda: "(upgrade 1)" in master.stderr(), 60, message="the new master to take over")
        assert master.call("status")["versions"]["master"] == "9.9.9"
        log = master.stderr()
        carried = re.search(r"rolling restart of template:w onto new code goes on: (\d) of 4 instances left", log)
        assert carried and 1 <= int(carried[1]) <= 3, log
        (tmp_path / "go").touch()
        out, err = reload.communicate(timeout=60)
    finally:
        reload.kill()
    assert reload.returncode == 0, out + err
    assert "4 running instances of 4 rolled onto it" in out, out
    wait_for(lambda: not master.call("status")["rollouts"], 20, message="the roll to end")
    rows = master.status()
    assert {n: (r["state"], r["restarts"], r["ready"]) for n, r in rows.items()} == \
        {n: ("running", 1, True) for n in before}, rows
    codes = _codes(master, before)
    for name, pid in before.items():  # each rolled exactly once, from v1 onto v2
        assert codes[name] == [("v1", pid), ("v2", rows[name]["pid"])], (name, codes[name])
    assert master.proc.poll() is None and "upgrade 1" in master.stderr()
    versions = master.call("status")["versions"]
    assert versions["master"] == "9.9.9" and versions["zygotes"] == versions["spawner"] == "0.1.0", versions
    wait_for(lambda: len(z := _zygotes(master)) == 1 and z != first, 10,
             message="the old zygote gone with its last worker")
