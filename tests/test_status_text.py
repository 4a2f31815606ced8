"""`orch status --json`: the master sends the rows' text as raw bytes after its reply line
(issue 31's framing); what the user sees keeps its shape: the rows and keys of a plain
status, a row per line, then the autoscaled cells."""

from __future__ import annotations

import json

from conftest import orch, wait_for
from orchestrator.control.client import ControlClient

FLEET = """
[workers.web]
command = "sleep 1000"
replicas = 2
[workers.job]
command = ["sleep", "1001"]
env = { NOTE = "quote \\" and \\u00e9" }
"""
STABLE = ("name", "template", "state", "pid", "restarts", "last_exit", "reason", "waiting", "memory_measure",
          "requests", "ready", "probes", "held", "notify_status", "limit_kills", "hash", "user")


def test_status_json_has_the_rows_of_a_plain_status_in_order(start_master):
    master = start_master(FLEET)
    master.wait_running(3)
    plain = master.call("status")["instances"]
    result = orch("status", "--json", "-c", str(master.config), timeout=20)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == 2 + len(plain), lines  # a row per line
    rows = json.loads(result.stdout)
    assert [list(r) for r in rows] == [list(r) for r in plain], "keys and their order as a plain status"
    assert [[r[k] for k in STABLE] for r in rows] == [[r[k] for k in STABLE] for r in plain]
    picked = json.loads(orch("status", "--json", "template:job", "-c", str(master.config), timeout=20).stdout)
    assert [r["name"] for r in picked] == ["job"]


def test_a_reply_with_a_tail_leaves_the_connection_in_step(start_master):
    master = start_master(FLEET)
    master.wait_running(3)
    client = ControlClient(master.socket)
    try:
        for _ in range(2):  # the next request on the same connection reads its own reply
            result, tail = client.call_with_tail("status", text_tail=True)
            assert "instances" not in result and "instances_text" not in result and result["pid"] == master.pid
            assert [r["name"] for r in json.loads(tail)] == ["web", "web-1", "job"]
            assert client.call("ping")["config"] == str(master.config)
        assert client.call_with_tail("ping")[1] == b""
    finally:
        client.close()
    wait_for(lambda: master.call("ping"), 5, message="the master to answer after the client left")


VARIETY = """
[workers.web]
command = "prog"
replicas = 2
memory = { measure = "pss" }
[workers.late]
command = "prog"
after = ["web"]
[workers.odd]
command = "prog \\u00e9"
"""


class _Probes:
    def status(self) -> dict:
        return {"readiness": {"kind": "http", "target": 'http://x/"q"', "passing": False, "checks": 3,
                              "last": 0.5, "last_failure": "refused \u00e9", "last_failure_at": None}}


def test_the_row_text_is_what_json_makes_of_every_kind_of_row(tmp_path):
    from fakes import Replay
    from orchestrator.control.status_rows import row_text
    from orchestrator.supervise.instance import Instance
    r = Replay(tmp_path, VARIETY)
    try:
        insts: dict[str, Instance] = r.supervisor.instances
        assert insts["late"].state.value == "waiting" and insts["web"].state.value == "starting"
        rows_before = [(row_text(i), json.dumps(i.status())) for i in insts.values()]
        r.ack()
        r.clock.now += 12.3456789
        web, odd = insts["web"], insts["odd"]
        web.rss, web.measured, web.cpu_percent, web.processes = 12345678, 2345, 12.3456, 3
        web.limit_kills, web.notify_status, web.requests = {"memory.hard": 2}, 'busy "x" \u00e9\n', 7
        web.probes, web.ready, web.last_reason = _Probes(), True, "memory.soft"
        r.exit("odd", code=3)
        odd.held = True
        rows_after = [(row_text(i), json.dumps(i.status())) for i in insts.values()]
        for text, made in rows_before + rows_after:
            assert text == made
        assert any('"probes": {"readiness"' in t for t, _ in rows_after) and any('"waiting": "' in t for t, _ in rows_before)
    finally:
        r.close()
