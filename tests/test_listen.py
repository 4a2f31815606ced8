"""`python -m orchestrator.worker.listen`: what exports put in front of a socket worker when
no master holds the socket. Real binds, real exec, real fds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from servers import free_port

PROBE = """
import json, os, socket
out = {"env": {k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID")},
       "pid": os.getpid(), "fds": sorted(int(f) for f in os.listdir("/proc/self/fd"))}
for fd in (3, 4):
    s = socket.socket(fileno=os.dup(fd))
    out[str(fd)] = [str(s.getsockname()), s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
print(json.dumps(out))
"""


def listen(*words: str, program: list[str] | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "orchestrator.worker.listen", *words, "--",
            *(program or [sys.executable, "-c", PROBE])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_sockets_land_at_fd_3_and_up_listening_with_systemd_variables(tmp_path):
    port = free_port()
    path = tmp_path / "admin.sock"
    result = listen(f"web={'127.0.0.1'}:{port}", f"admin/16=unix:{path}")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["env"] == {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:admin", "LISTEN_PID": str(seen["pid"])}
    assert seen["3"] == [str(("127.0.0.1", port)), 1]
    assert seen["4"] == [str(path), 1]
    # python's own start-up may open and close fds, but none of the wrapper's stay behind
    assert [fd for fd in seen["fds"] if fd > 4] in ([], [5])  # 5: listdir's own handle


def test_replicas_share_one_tcp_port(tmp_path):
    port = free_port()
    hold = f"import os, time; os.write(1, b'up\\n'); time.sleep(30)"
    first = subprocess.Popen([sys.executable, "-m", "orchestrator.worker.listen", f"web=127.0.0.1:{port}",
                              "--", sys.executable, "-c", hold], stdout=subprocess.PIPE)
    try:
        assert first.stdout.readline() == b"up\n"
        second = listen(f"web=127.0.0.1:{port}")
        assert second.returncode == 0, second.stderr
    finally:
        first.kill()
        first.wait(timeout=10)


def test_a_live_unix_socket_is_refused_and_a_stale_one_replaced(tmp_path):
    path = tmp_path / "s.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    result = listen(f"admin=unix:{path}")
    assert result.returncode == 2 and result.stderr == f"orch listen: {path} is in use by another process\n"
    live.close()  # the file stays: a stale socket
    assert path.exists()
    result = listen(f"admin=unix:{path}")
    assert result.returncode == 0, result.stderr


def test_bad_usage_and_bind_failures_exit_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "orchestrator.worker.listen", "web=127.0.0.1:1"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.startswith("usage:")
    result = listen("nonsense")
    assert result.returncode == 2 and result.stderr == "orch listen: expected NAME[/BACKLOG]=ADDRESS, got 'nonsense'\n"
    result = listen("web=192.0.2.1:8000")
    assert result.returncode == 2 and "Cannot assign requested address" in result.stderr
    result = listen(f"web=127.0.0.1:{free_port()}", program=[str(Path("/no/such/program"))])
    assert result.returncode == 127 and "cannot run /no/such/program" in result.stderr
