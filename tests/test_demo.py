"""The shipped demo (README's first command) runs and does visible work."""

from __future__ import annotations

import pytest

import shutil
import sqlite3

from conftest import ROOT, text_of, wait_for


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def test_the_demo_config_runs_consumers_that_drain_the_queue(start_master, tmp_path):
    text = (ROOT / "configs" / "workers.toml").read_text()
    master = start_master(text)
    running = master.wait_running(5, timeout=20)
    assert set(running) == {"producer", "consumer-10.0.0.1-queue1", "consumer-10.0.0.1-queue2",
                            "consumer-10.0.0.2-queue1", "consumer-10.0.0.3-urgent"}
    db = tmp_path / ".orch" / "demo-queue.sqlite"

    def done_by() -> set[str]:
        if not db.exists():
            return set()
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                rows = conn.execute("SELECT DISTINCT worker FROM jobs WHERE state = 'done'").fetchall()
        except sqlite3.OperationalError:  # the file exists a moment before its table does
            return set()
        return {r[0] for r in rows}
    workers = wait_for(lambda: len(done_by()) >= 3 and done_by(), 20, interval=0.2,
                       message="jobs done by several consumers")
    assert workers <= set(running)
    # It says "watching" after installing its SIGTERM handler; before that a SIGTERM ends it
    # at once (three busy peers do not prove this one got that far on a loaded machine).
    urgent = master.log_dir / "consumer-10.0.0.3-urgent.log"
    wait_for(lambda: "watching queue" in text_of(urgent), 10, message="the urgent consumer's handler")
    assert master.terminate() == 0
    log = (master.log_dir / "consumer-10.0.0.3-urgent.log").read_text()
    assert "finished the job in hand" in log, "consumers stop gracefully on SIGTERM"


def test_the_example_configs_are_valid(tmp_path):
    from orchestrator.config.load import load_config
    from orchestrator.expand.render import expand
    shutil.copy(ROOT / "configs" / "workers.toml", tmp_path / "workers.toml")
    assert len(expand(load_config(tmp_path / "workers.toml"))) == 5
