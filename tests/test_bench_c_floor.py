"""bench.c_floor compiles its C loop, starts real sleeps from 1 and 2 processes, reports the
wall time and the machine's CPU for each, and leaves no sleep behind (never a speed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def test_bench_c_floor_times_both_ways_and_ends_its_sleeps() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.c_floor", "--n", "40", "--reps", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in done.stdout.splitlines() if re.match(r"\| [12] \|", r)]
    assert len(rows) == 2, done.stdout
    for row in rows:
        wall, cpu = (float(x) for x in re.findall(r"\| ([\d.]+) \(", row))
        assert wall > 0 and cpu >= 0, row
    left = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["/bin/sleep", "86399"]]
    assert not left, f"sleeps left behind: {left}"
