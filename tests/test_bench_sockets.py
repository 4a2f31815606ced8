"""Smoke test of `python -m bench.sockets` at one short turn: all three setups answer with
no failed request and the table is produced. Never a speed."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def test_bench_sockets_runs_every_setup_without_errors(tmp_path):
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "-m", "bench.sockets", "--reps", "1", "--seconds", "1",
                             "--connections", "4", "--json", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    for load in ("keep-alive", "new connection per request"):
        assert set(data[load]) == {"orch", "prefork", "reuseport", "prefork, one session"}
        assert all(r["median"] > 0 and r["errors"] == 0 for r in data[load].values()), data[load]
    assert "against prefork" in result.stdout and "against reuseport" in result.stdout
