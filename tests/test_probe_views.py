"""Probe state where people look (issue 27): the compact cell of `orch status` and `orch top`,
the lines of `orch inspect`, and the metrics endpoint, from a real master probing a real
server that answers 503 until told otherwise."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import orch, wait_for
from servers import free_port
from orchestrator.cli.probe_view import probe_lines, probe_summary
from orchestrator.cli.top import TopState, apply_reply, fit_columns, render

LIVE_OK = {"kind": "tcp", "target": "127.0.0.1:1", "active": True, "passing": True, "checks": 4, "failed": 0,
           "failures": 0, "last": "ok", "last_failure": None, "last_failure_at": None}
READY_FAILING = {"kind": "http", "target": "127.0.0.1:1/health", "active": True, "passing": False, "checks": 3,
                 "failed": 3, "failures": 3, "last": "HTTP 503 from /health", "last_failure": "HTTP 503 from /health",
                 "last_failure_at": 1000.0}


@pytest.mark.parametrize("inst,summary", [
    ({"probes": None}, ""),
    ({"ready": False, "probes": {"liveness": LIVE_OK}}, "ok"),
    ({"ready": False, "probes": {"liveness": {**LIVE_OK, "last": "timed out after 1s"}}}, "liveness: timed out after 1s"),
    ({"ready": True, "probes": {"readiness": {**READY_FAILING, "last": "ok"}}}, "ready"),
    ({"ready": False, "probes": {"readiness": READY_FAILING, "liveness": LIVE_OK}},
     "not ready, readiness: HTTP 503 from /health"),
])
def test_probe_summary(inst: dict, summary: str) -> None:
    assert probe_summary(inst) == summary


def test_probe_lines_say_state_checks_and_when_it_last_failed() -> None:
    lines = probe_lines({"liveness": LIVE_OK, "readiness": READY_FAILING}, now=1065.0)
    assert lines[0] == "probes:" and lines[1].startswith("  readiness") and lines[2].startswith("  liveness")
    assert "http 127.0.0.1:1/health: failing 3x, 3 checks (3 failed), last HTTP 503 from /health" in lines[1]
    assert lines[1].endswith(f"last failure: HTTP 503 from /health at {time.strftime('%H:%M:%S', time.localtime(1000))} "
                             "(1m05s ago)")
    assert "passing, 4 checks (0 failed), last ok" in lines[2] and "last failure" not in lines[2]


def test_top_has_a_probes_column_only_when_some_instance_has_probes() -> None:
    plain = {"name": "w-0", "template": "w", "state": "running", "pid": 1, "uptime": 1.0, "restarts": 0,
             "rss": 0, "cpu": 0.0, "requests": 0}
    assert "PROBES" not in [c.title for c, _ in fit_columns(4, [plain], 200)]
    titles = [c.title for c, _ in fit_columns(4, [plain], 200, probes=True)]
    assert titles[-2:] == ["PROBES", "STATUS"]


SERVER = '''
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if os.path.exists("healthy") else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


@pytest.mark.slow  # a master, five CLI runs and metrics rendered at most once a second
def test_status_top_inspect_and_metrics_show_each_probe(start_master, tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    (tmp_path / "serve.py").write_text(SERVER)
    master = start_master(f'''
    [orchestrator]
    metrics = "127.0.0.1:{metrics}"
    [workers.web]
    command = "{sys.executable} serve.py {port}"
    probes.readiness = {{ http = "http://127.0.0.1:{port}/health", period = "0.1s", failures = 1 }}
    probes.liveness = {{ tcp = "127.0.0.1:{port}", period = "0.1s", failures = 50 }}
    ''')
    row = wait_for(lambda: (r := master.status()["web"])["probes"] and r["probes"]["readiness"]["failed"] >= 2
                   and r["probes"]["readiness"]["last"] == "HTTP 503 from /health"  # served, not refused
                   and r["probes"]["liveness"]["last"] == "ok" and r, 10, message="readiness failing, liveness ok")
    readiness = row["probes"]["readiness"]
    assert readiness["last_failure"] == "HTTP 503 from /health" and abs(readiness["last_failure_at"] - time.time()) < 5
    status = orch("status", "-c", str(master.config)).stdout
    assert "PROBES" in status and "not ready, readiness: HTTP 503 from /health" in status, status
    as_json = json.loads(orch("status", "--json", "-c", str(master.config)).stdout)
    assert "readiness" in json.dumps(as_json) and "last_failure_at" in json.dumps(as_json)
    state = TopState()
    apply_reply(state, master.call("status"), time.time())
    screen = "\n".join("".join(t for t, _ in line) for line in render(state, 200, 10))
    assert "PROBES" in screen and "not ready, readiness: HTTP 503" in screen, screen
    inspect = orch("inspect", "web", "-c", str(master.config)).stdout
    assert f"readiness http 127.0.0.1:{port}/health: failing" in inspect, inspect
    assert "last failure: HTTP 503 from /health at " in inspect and f"liveness  tcp 127.0.0.1:{port}: passing" in inspect
    assert json.loads(orch("inspect", "web", "--json", "-c", str(master.config)).stdout)["probes"]["readiness"]["failed"] >= 2
    text = wait_for(lambda: 'probe="readiness"' in (t := _metrics(metrics)) and t, 5, message="probe metrics")
    assert 'orch_probe_up{name="web",template="web",probe="readiness",kind="http"} 0' in text, text
    assert 'orch_probe_up{name="web",template="web",probe="liveness",kind="tcp"} 1' in text
    assert 'orch_instance_ready{name="web",template="web"} 0' in text
    assert 'orch_probe_failures_total{name="web",template="web",probe="readiness",kind="http"} ' in text
    (tmp_path / "healthy").touch()
    wait_for(lambda: 'orch_instance_ready{name="web",template="web"} 1' in _metrics(metrics), 5, message="ready in metrics")
    assert 'probe="readiness",kind="http"} 1' in _metrics(metrics)
