"""`memory.measure`: workers forked from a preload zygote share its pages, so RSS counts the
shared 48 MiB in each of them; PSS divides it among them (issue 25)."""

from __future__ import annotations

import pytest

import time

import psutil
from conftest import wait_for

pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting

APP = """
import time
from orchestrator.worker import Worker

SHARED = bytearray(48 * 2**20)  # made in the zygote: every worker maps these pages, shared
for i in range(0, len(SHARED), 4096):
    SHARED[i] = 1

class Sharing(Worker):
    def run(self):
        time.sleep(0.05)
        return False
"""


def _config(measure: str) -> str:
    return f"""
        [workers.share]
        target = "app:Sharing"
        preload = true
        replicas = 8
        min_uptime = "0.5s"
        memory = {{ hard = "40MiB", measure = "{measure}" }}
        stop_timeout = "2s"
    """


def test_pss_spares_a_preload_fleet_that_rss_recycles(start_master, tmp_path):
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "workers.toml").write_text("")
    master = start_master("[orchestrator]\ncheck_interval = \"100ms\"\n" + _config("pss"))
    pids = master.wait_running(8, timeout=30)
    rss = [psutil.Process(pid).memory_info().rss for pid in pids.values()]
    assert min(rss) > 40 * 2**20, f"each worker's RSS must be over the limit for this test: {rss}"
    time.sleep(1.5)  # fifteen samples
    assert master.pids() == pids, "a worker under its PSS limit was recycled"
    rows = master.call("status")["instances"]
    assert all(r["memory_measure"] == "pss" and 0 < r["measured"] < 40 * 2**20 for r in rows), rows
    from conftest import orch
    text = orch("status", "-c", str(master.config)).stdout
    assert "LIMITED ON" in text and "PSS " in text, text

    master.write("[orchestrator]\ncheck_interval = \"100ms\"\n" + _config("rss"))
    wait_for(lambda: "memory_hard" in master.stderr(), 10, message="RSS to recycle the workers")
    assert "RSS " in master.stderr() and "over 40.0M" in master.stderr()
