"""bench.probes_idle runs end to end on a tiny fleet: both modes, the checks the master counted
(none of them connected: the listener table answered), and the per-check line against the
floors (the figure in RESULTS.md comes from N = 5,000)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # two masters and a few seconds of probing
def test_probes_idle_measures_both_modes_and_the_floor() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.probes_idle", "--n", "3", "--seconds", "1",
                             "--period", "0.2", "--floor", "50"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == 2 and "| none |" in rows[0] and "| tcp every 0.2 s |" in rows[1], result.stdout
    checks, connected = float(rows[1].split("|")[4]), float(rows[1].split("|")[5])
    assert 10 <= checks <= 20, rows[1]  # 3 probes every 0.2 s: 15 a second, counted by the master
    assert connected == 0, "local tcp probes connected instead of reading the listener table"
    assert "Per check at N = 3:" in result.stdout and "listener table, 25 a round" in result.stdout
