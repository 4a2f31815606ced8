"""Readiness-gated rolling restart under real load (issue 27): 4 replicas behind a socket the
master holds, each starting 0.5 s late and never saying READY=1 that counts (a readiness probe
on its own port decides), restarted batch by batch while `wrk` runs: not one failed request."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import orch, wait_for
from loadgen import Wrk
from servers import free_port
from test_probes import _free

# Late: sleep, bind its own health port (kept open across exec), then become the demo server
# on the shared socket. The probe reaches this replica only, never whichever accepts.
LATE = '''
import os, socket, sys, time
time.sleep(0.5)
health = socket.create_server(("127.0.0.1", int(sys.argv[1])))
health.set_inheritable(True)
os.execv(sys.executable, [sys.executable, "-m", "orchestrator.demo.web", "--fd", sys.argv[2]])
'''


@pytest.mark.slow  # a rolling restart of 4 late starters under wrk: about 6 s
def test_rolling_restart_behind_a_shared_socket_under_wrk_fails_nothing(start_master, tmp_path: Path) -> None:
    port, health = free_port(), free_port()
    while not all(_free(health + i) for i in range(4)):
        health = free_port()
    (tmp_path / "late.py").write_text(LATE)
    master = start_master(f'''
    [sockets.web]
    bind = "127.0.0.1:{port}"
    backlog = 512

    [workers.web]
    command = "{sys.executable} late.py {{{{ {health} + replica }}}} {{{{ sockets.web.fd }}}}"
    sockets = ["web"]
    replicas = 4
    rolling = true
    max_unavailable = 1
    min_uptime = "0.1s"
    stop_timeout = "10s"
    probes.readiness = {{ tcp = "127.0.0.1:{{{{ {health} + replica }}}}", period = "0.1s", failures = 1 }}
    ''')
    wait_for(lambda: len(rows := master.status()) == 4 and all(r["ready"] for r in rows.values()), 15,
             message="4 ready")
    old = master.pids()
    with Wrk(f"http://127.0.0.1:{port}/", seconds=6) as wrk:
        result = orch("restart", "--rolling", "template:web", "-c", str(master.config), timeout=60)
        assert result.returncode == 0, result.stderr
        rows = master.status()
        assert all(rows[n]["pid"] != old[n] and rows[n]["ready"] for n in old), rows
        done = wrk.assert_clean()
    assert done["requests"] > 1000, done["output"]
