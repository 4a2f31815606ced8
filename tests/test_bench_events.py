"""bench.events runs end to end on a tiny fleet and reports both figures (never a speed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_events_times_every_kill_to_the_followers_lines() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.events", "--n", "3", "--kills", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 sleeps, 3 SIGKILLs" in done.stdout, done.stdout
    for line in ("| `exited` line |", "| `started` line (the replacement) |"):
        row = next((r for r in done.stdout.splitlines() if r.startswith(line)), None)
        assert row is not None, done.stdout
        cells = re.findall(r"([\d.]+) ms", row)
        assert len(cells) >= 3 and all(float(c) > 0 for c in cells[:3]), row
