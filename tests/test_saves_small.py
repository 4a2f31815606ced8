"""Smaller things from issue 17: metrics pass promtool and drop idle clients, `orch status`
shows the worker's STATUS= text, orch's log rotation notices an outside truncation."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import orch, wait_for
from orchestrator.observe.logs import LogFile
from orchestrator.observe.metrics import IDLE_TIMEOUT
from test_service import free_port, scrape

METRICS = """
[orchestrator]
metrics = "127.0.0.1:{port}"
[workers.m]
command = "sleep 1000"
replicas = 2
"""


def promtool(text: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (Debian package prometheus; scripts/test-deps installs it)")
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)


def test_every_metric_family_has_help_and_type_and_promtool_passes(start_master):
    port = free_port()
    master = start_master(METRICS.format(port=port))
    master.wait_running(2)
    master.write(METRICS.format(port=port).replace("replicas = 2", "replicas = 3"))  # a reload to count
    wait_for(lambda: master.call("status")["reloads"] == 1, 10, message="the reload")
    body = scrape(port)[1]
    families = {line.split()[0].split("{")[0] for line in body.splitlines() if line and not line.startswith("#")}
    assert {"orch_instances", "orch_reloads_total", "orch_reload_failures_total",
            "orch_last_reload_seconds", "orch_instance_up"} <= families
    for family in families:
        assert f"# HELP {family} " in body and f"# TYPE {family} " in body, family
    result = promtool(body)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_client_that_sends_nothing_is_dropped(start_master):
    port = free_port()
    master = start_master(METRICS.format(port=port))
    master.wait_running(2)
    silent = socket.create_connection(("127.0.0.1", port), timeout=IDLE_TIMEOUT + 10)
    half = socket.create_connection(("127.0.0.1", port), timeout=IDLE_TIMEOUT + 10)
    try:
        half.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line
        began = time.monotonic()
        assert "orch_instance_up" in scrape(port)[1], "the loop keeps serving others meanwhile"
        assert silent.recv(1024) == b"", "dropped: end of stream, no response"
        assert half.recv(1024) == b""
        assert time.monotonic() - began >= IDLE_TIMEOUT - 1, "not before the timeout"
    finally:
        silent.close()
        half.close()
    assert master.proc.poll() is None and "orch_instance_up" in scrape(port)[1]


SAYS = """
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(("READY=1\\nSTATUS=" + sys.argv[1]).encode(), os.environ["NOTIFY_SOCKET"])
time.sleep(1000)
"""


def test_orch_status_shows_the_workers_status_text(start_master, tmp_path):
    long = "draining queue1: " + "x" * 200
    master = start_master(f"""
        [workers.talk]
        command = {json.dumps([sys.executable, "-c", SAYS, "42 jobs in flight"])}
        [workers.long]
        command = {json.dumps([sys.executable, "-c", SAYS, long])}
        [workers.quiet]
        command = "sleep 1000"
    """)
    master.wait_running(3)
    wait_for(lambda: all(master.status()[n]["notify_status"] for n in ("talk", "long")), 10,
             message="both STATUS= texts")
    lines = orch("status", cwd=tmp_path).stdout.splitlines()
    header = next(line for line in lines if line.startswith("NAME"))
    assert header.split()[-1] == "STATUS"
    row = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("talk", "long", "quiet")}
    assert row["talk"].endswith("42 jobs in flight")
    assert row["long"].endswith("draining queue1: " + "x" * 60 + "...") and len(row["long"]) < len(long) + 40
    assert re.search(r"\d\.\d\s+\d+$", row["quiet"]), "no text: the row ends with its CPU% and PROCS"


# --- log rotation after an outside truncation (logrotate copytruncate) ------------------------

def copytruncate(path: Path) -> None:
    """What logrotate's copytruncate does: copy the file, then truncate it in place."""
    shutil.copyfile(path, path.with_name(path.name + ".copy"))
    os.truncate(path, 0)


def test_logfile_restarts_its_size_count_after_an_outside_truncation(tmp_path):
    log = LogFile(tmp_path / "w.log", max_size=1000, backups=2)
    try:
        log.write(b"a" * 900)
        copytruncate(log.path)
        log.write(b"b" * 200)   # the count said 1100: a rotation of 200 bytes, before the fix
        assert not log.path.with_name("w.log.1").exists()
        assert log.path.read_bytes() == b"b" * 200
        log.write(b"c" * 700)
        assert not log.path.with_name("w.log.1").exists()
        log.write(b"d" * 200)   # 1100 now for real: rotated
        assert log.path.with_name("w.log.1").read_bytes() == b"b" * 200 + b"c" * 700
        assert log.path.read_bytes() == b"d" * 200
    finally:
        log.close()


PRINTS = json.dumps([sys.executable, "-c", "import time\nwhile True:\n print('x' * 99, flush=True)\n time.sleep(0.01)"])


def test_a_running_master_rotates_by_real_size_after_copytruncate(start_master, tmp_path):
    master = start_master(f"""
        [workers.p]
        command = {PRINTS}
        log_max_size = "8KiB"
        log_backups = 2
    """)
    log = master.log_dir / "p.log"
    wait_for(lambda: log.exists() and log.stat().st_size >= 6000, 15, message="6000 bytes of log")
    copytruncate(log)
    wait_for(lambda: log.stat().st_size >= 4000, 15, message="4000 bytes after the truncation")
    assert not log.with_name("p.log.1").exists(), "rotated a file far below log_max_size"
    wait_for(lambda: log.with_name("p.log.1").exists(), 20, message="the rotation at 8KiB")
    assert log.with_name("p.log.1").stat().st_size >= 8192 - 100
