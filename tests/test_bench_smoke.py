"""Smoke test of `python -m bench` at a tiny fleet: every figure is produced for every tool
(a value, or n/a with its reason), and orch's core figures are real numbers. Never a speed."""

from __future__ import annotations

import pytest

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLEET_KEYS = ["start", "idle_cpu", "idle_rss", "idle_pss", "status", "crash", "reload_one", "reload_one_collateral",
              "reload_10pct", "reload_10pct_collateral", "shutdown", "limits_cpu", "start_matrix",
              "reload_one_matrix", "reload_save"]
ORCH_KEYS = ["py_start_plain", "py_start_preload", "log_cpu", "log_rate"]
ORCH_MUST_MEASURE = ["start", "crash", "shutdown", "reload_one", "reload_10pct", "limits_cpu", "start_matrix",
                     "reload_one_matrix", "reload_save"]


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def run_bench(out: Path, tools: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bench", "--n", "5", "--reps", "1", "--idle-seconds", "1",
            "--crash-kills", "3", "--budget", "90", "--json", str(out),
            "--tools", ",".join(t for t in tools if t != "floor")] + ([] if "floor" in tools else ["--no-floor"])
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the bench kills its daemons on SIGTERM
        stdout, stderr = proc.communicate(timeout=30)
        raise AssertionError(f"bench did not finish in 120 s:\n{stderr[-3000:]}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


# Two halves in two processes, so that xdist runs them side by side (one run of all four
# tools took 56 s alone, 94 s on a loaded machine: the suite's longest test).
@pytest.mark.parametrize("tools", [["floor", "orch"], ["supervisord", "circus"]], ids=["floor+orch", "others"])
def test_bench_produces_every_figure(tmp_path: Path, tools: list[str]) -> None:
    out = tmp_path / "out.json"
    done = run_bench(out, tools)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    figures = {(f["tool"], f["key"]): f for f in data["figures"]}

    for tool in tools:
        for key in FLEET_KEYS + ORCH_KEYS:
            figure = figures.get((tool, key))
            assert figure is not None, f"no figure {key} for {tool}"
            if figure["median"] is None:
                assert isinstance(figure["na"], str) and figure["na"], f"{tool} {key}: n/a without a reason"
            else:
                assert figure["samples"] and figure["min"] <= figure["median"] <= figure["max"]

    if "orch" in tools:
        for key in ORCH_MUST_MEASURE:
            figure = figures[("orch", key)]
            assert figure["median"] is not None, f"orch {key}: {figure['na']}"
        floor = figures[("floor", "limits_cpu")]  # the bare sampling loop orch is compared with
        assert floor["median"] is not None, f"floor limits_cpu: {floor['na']}"

    assert "| start | 5 |" in done.stdout
    assert data["machine"]["cores"] and all(data["machine"]["versions"][t] for t in tools if t != "floor")


def test_pids_handed_out_since_include_a_wrap_around() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.procfs import _FIRST_PID_AFTER_WRAP, _PID_MAX, _pids_after

    assert list(_pids_after(100, 103)) == [101, 102, 103]
    assert list(_pids_after(103, 103)) == []
    wrapped = list(_pids_after(_PID_MAX - 3, _FIRST_PID_AFTER_WRAP + 1))
    assert wrapped == [_PID_MAX - 2, _PID_MAX - 1, _FIRST_PID_AFTER_WRAP, _FIRST_PID_AFTER_WRAP + 1]


def test_the_harness_sees_a_new_process_by_its_token_and_an_ended_one(tmp_path: Path) -> None:
    """What crash and reload timings rest on: a process started after `since` carrying the
    token is found (also when it execs after its fork), and a pid meant to end is waited for."""
    sys.path.insert(0, str(ROOT))
    from bench.procfs import last_pid, wait_changed

    doomed = subprocess.Popen(["sleep", "30"])
    since = last_pid()
    born = subprocess.Popen([sys.executable, "-c", "import os, sys, time; time.sleep(0.2); "
                             "os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', "
                             "'tok123x'])"])
    try:
        doomed.kill()
        doomed.wait()
        assert wait_changed({"tok123x"}, {doomed.pid}, since, 10, 0.005) < 10
        try:
            wait_changed({"never-seen-token"}, set(), since, 0.3, 0.005)
        except TimeoutError:
            pass
        else:
            raise AssertionError("a token no process carries was reported seen")
    finally:
        born.kill()
        born.wait()
