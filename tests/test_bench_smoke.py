"""Smoke test of `python -m bench` at a tiny fleet: every figure is produced for every tool
(a value, or n/a with its reason), and orch's core figures are real numbers. Never a speed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ["floor", "orch", "supervisord", "circus"]
FLEET_KEYS = ["start", "idle_cpu", "idle_rss", "idle_pss", "status", "crash", "reload_one", "reload_one_collateral",
              "reload_10pct", "reload_10pct_collateral", "shutdown"]
ORCH_KEYS = ["py_start_plain", "py_start_preload", "log_cpu", "log_rate"]
ORCH_MUST_MEASURE = ["start", "crash", "shutdown", "reload_one"]


def run_bench(out: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bench", "--n", "5", "--reps", "1", "--idle-seconds", "1",
            "--crash-kills", "3", "--budget", "90", "--json", str(out)]
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


def test_bench_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = run_bench(out)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    figures = {(f["tool"], f["key"]): f for f in data["figures"]}

    for tool in TOOLS:
        for key in FLEET_KEYS + ORCH_KEYS:
            figure = figures.get((tool, key))
            assert figure is not None, f"no figure {key} for {tool}"
            if figure["median"] is None:
                assert isinstance(figure["na"], str) and figure["na"], f"{tool} {key}: n/a without a reason"
            else:
                assert figure["samples"] and figure["min"] <= figure["median"] <= figure["max"]

    for key in ORCH_MUST_MEASURE:
        figure = figures[("orch", key)]
        assert figure["median"] is not None, f"orch {key}: {figure['na']}"

    assert "| start | 5 |" in done.stdout
    assert data["machine"]["cores"] and data["machine"]["versions"]["orch"]
