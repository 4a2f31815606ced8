"""Smoke test of `python -m bench.queues` at a tiny size: it runs both setups side by side and
prints both ratios. Never a speed assertion."""

from __future__ import annotations

import pytest

import re
import subprocess
import sys

from conftest import ROOT


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def test_queue_bench_reports_both_ratios(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bench.queues", "--messages", "300", "--reps", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for setup in ("bare x1", "orch x1", "bare x4", "orch x4"):
        assert re.search(rf"\| {setup} \| [\d,]+ msg/s .*µs \|", result.stdout), (setup, result.stdout)
    assert re.search(r"one orch consumer ÷ one bare loop: \*\*×\d+\.\d\d\*\*", result.stdout)
    assert re.search(r"four orch consumers ÷ one orch consumer: \*\*×\d+\.\d\d\*\*", result.stdout)


def test_write_section_keeps_the_rest_and_replaces_itself(tmp_path):
    from bench.queues import write_section
    from bench.report import SECTION_PREFIX, write_results
    from bench.report import write_section as write_named
    results = tmp_path / "RESULTS.md"
    results.write_text("# main bench\n\ntable\n")
    write_section("## Queue consumers (Redis lists)\nfirst\n", results)
    write_named(results, "sockets", "## Sockets\nheld\n")
    write_section("## Queue consumers (Redis lists)\nsecond\n", results)
    text = results.read_text()
    assert text.startswith("# main bench\n\ntable\n") and text.count(SECTION_PREFIX) == 2
    assert "second" in text and "first" not in text and "held" in text
    write_results(results, "new table", "notes", {"cpu": "x", "cores": 2, "kernel": "k", "python": "3",
                                                   "versions": {}, "date": "d"}, "python -m bench")
    text = results.read_text()
    assert "new table" in text and "second" in text and "held" in text, "the main rewrite keeps both"
