"""A held socket whose every instance crash-loops stops holding connections that would only
hang: after `reset_after` without a running instance, new connections are reset (issue 23),
status says so, and once an instance runs again connections wait and are served."""

from __future__ import annotations

import pytest

import socket
import sys

from conftest import orch, wait_for
from loadgen import http_get
from servers import free_port

PY = sys.executable


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def _config(port: int, command: str) -> str:
    return f"""
        [sockets.web]
        bind = "127.0.0.1:{port}"
        reset_after = "0.5s"

        [workers.web]
        command = "{command}"
        sockets = ["web"]
        stop_timeout = "2s"
        backoff = {{ initial = "5s", max = "5s" }}
        """


def _reset_at_once(port: int) -> bool:
    """True if a connection to the port is reset (or refused) at once instead of hanging."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.settimeout(2)
        try:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return conn.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def test_a_socket_nobody_serves_resets_connections_until_an_instance_runs(start_master):
    port = free_port()
    master = start_master(_config(port, "sh -c 'exit 3'"))
    with socket.create_connection(("127.0.0.1", port), timeout=2) as early:  # waits in the backlog
        early.settimeout(0.2)
        try:
            assert early.recv(10) == b"", "reset before reset_after"
            raise AssertionError("a connection made at once was reset, not held in the backlog")
        except socket.timeout:
            pass  # held: nobody answers yet, as a restart would need
    wait_for(lambda: _reset_at_once(port), 10, message="connections to be reset")
    sockets = master.call("status")["sockets"]
    assert sockets[0]["resetting"] and sockets[0]["reset"] >= 1, sockets
    text = orch("status", "-c", str(master.config)).stdout
    assert "socket web (127.0.0.1:" in text and "new connections are reset" in text, text

    master.write(_config(port, f"{PY} -m orchestrator.demo.web --fd {{{{ sockets.web.fd }}}}"))
    wait_for(lambda: master.status()["web"]["state"] == "running", 20, message="a serving instance")
    assert http_get(("127.0.0.1", port)) == 200
    wait_for(lambda: not master.call("status")["sockets"][0]["resetting"], 5, message="resets to stop")
    assert "new connections are reset" not in orch("status", "-c", str(master.config)).stdout
