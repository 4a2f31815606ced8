"""bench/host.py: the machine line names a running DAMON monitor, and --pause-damon turns
it off for a run and back on after, whatever happens. On a DAMON sysfs tree laid out
under tmp_path as the kernel lays out /sys/kernel/mm/damon/admin (the real one is the
host's: a test does not switch it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.host import damon, paused_damon
from bench.report import render_machine


def kdamond(admin: Path, index: int, state: str, ops: str = "paddr", action: str = "pageout",
            sample_us: str = "500000") -> Path:
    kd = admin / "kdamonds" / str(index)
    ctx = kd / "contexts" / "0"
    (ctx / "monitoring_attrs" / "intervals").mkdir(parents=True)
    (ctx / "schemes" / "0").mkdir(parents=True)
    (kd / "state").write_text(state + "\n")
    (ctx / "operations").write_text(ops + "\n")
    (ctx / "schemes" / "0" / "action").write_text(action + "\n")
    (ctx / "monitoring_attrs" / "intervals" / "sample_us").write_text(sample_us + "\n")
    (admin / "kdamonds" / "nr_kdamonds").write_text(f"{index + 1}\n")
    return kd


def test_a_running_kdamond_is_described_and_one_that_is_off_is_not(tmp_path):
    assert damon(tmp_path / "no-damon-here") is None
    kdamond(tmp_path, 0, "off", ops="vaddr", action="stat")
    assert damon(tmp_path) is None
    kdamond(tmp_path, 1, "on")
    assert damon(tmp_path) == "DAMON on: paddr pageout, sampling every 0.5 s"


def test_the_machine_line_says_so_only_when_there_is_something_to_say():
    info = {"cpu": "x", "cores": 2, "kernel": "6", "python": "3.11", "versions": {"orch": "0.1"},
            "date": "today"}
    assert "memory monitor" not in render_machine(info)
    line = render_machine({**info, "damon": "DAMON on: paddr pageout, sampling every 0.5 s"})
    assert line.endswith("Host memory monitor: DAMON on: paddr pageout, sampling every 0.5 s.")


def test_pause_turns_running_kdamonds_off_and_back_on_even_when_the_run_fails(tmp_path):
    running, idle = kdamond(tmp_path, 0, "on"), kdamond(tmp_path, 1, "off")
    with pytest.raises(RuntimeError):
        with paused_damon(tmp_path) as paused:
            assert paused == [running]
            assert (running / "state").read_text() == "off\n"
            assert damon(tmp_path) is None
            raise RuntimeError("the run failed")
    assert (running / "state").read_text() == "on\n"
    assert (idle / "state").read_text() == "off\n"  # not ours to start
    with paused_damon(tmp_path / "none") as paused:
        assert paused == []
