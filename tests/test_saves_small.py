"""Smaller things from issue 17: metrics pass promtool and drop idle clients, `orch status`
shows the worker's STATUS= text, orch's log rotation notices an outside truncation."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import orch, wait_for
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
    assert re.search(r"\d\.\d$", row["quiet"]), "no text: the row ends with its CPU%"
