"""Shared listening sockets under real load: 4 HTTP workers behind a socket the master
holds, `wrk` and a Python client loop running throughout, and not one failed request across
rolling restarts, reloads, scaling, recycling, bind changes and a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

import pytest

from conftest import Master, orch, wait_for
from loadgen import ClientLoop, Wrk, http_get

PY = sys.executable


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def web_config(bind: str, replicas: int = 4, extra: str = "", command_extra: str = "",
               socket_extra: str = "") -> str:
    return f"""
        [sockets.web]
        bind = "{bind}"
        backlog = 512
        {socket_extra}

        [workers.web]
        command = "{PY} -m orchestrator.demo.web --fd {{{{ sockets.web.fd }}}}{command_extra}"
        sockets = ["web"]
        replicas = {replicas}
        rolling = true
        stop_timeout = 10
        {extra}
        """


def all_replaced(master, old: dict[str, int], count: int):
    def done() -> bool:
        rows = master.status()
        running = {n: r["pid"] for n, r in rows.items() if r["state"] == "running" and r["ready"]}
        return len(rows) == count and len(running) == count and not set(running.values()) & set(old.values())
    return done


def test_rolling_restart_and_command_reload_refuse_nothing(start_master):
    port = free_port()
    master = start_master(web_config(f"127.0.0.1:{port}"))
    old = master.wait_running(4)
    with ClientLoop(lambda: ("127.0.0.1", port)) as loop, Wrk(f"http://127.0.0.1:{port}/") as wrk:
        loop.wait_requests(20)
        result = orch("restart", "--rolling", "template:web", "-c", str(master.config))
        assert result.returncode == 0, result.stderr
        wait_for(all_replaced(master, old, 4), 20, message="a rolling restart of 4 workers")
        middle = master.pids()
        master.write(web_config(f"127.0.0.1:{port}", command_extra=" --socket web"))
        wait_for(all_replaced(master, middle, 4), 20, message="a rolling reload of 4 workers")
        loop.wait_requests(20)
        wrk.assert_clean()
    loop.assert_clean()


def test_replicas_4_8_2_by_saving_the_file(start_master):
    port = free_port()
    master = start_master(web_config(f"127.0.0.1:{port}"))
    master.wait_running(4)
    with ClientLoop(lambda: ("127.0.0.1", port)) as loop, Wrk(f"http://127.0.0.1:{port}/", 3) as wrk:
        loop.wait_requests(20)
        master.write(web_config(f"127.0.0.1:{port}", replicas=8))
        master.wait_running(8, timeout=20)
        loop.wait_requests(20)
        master.write(web_config(f"127.0.0.1:{port}", replicas=2))
        master.wait_running(2, timeout=20)
        loop.wait_requests(20)
        wrk.assert_clean()
    loop.assert_clean()


def test_max_requests_recycles_gracefully(start_master):
    port = free_port()
    master = start_master(web_config(f"127.0.0.1:{port}", extra="max_requests = 2000"))
    master.wait_running(4)
    with ClientLoop(lambda: ("127.0.0.1", port)) as loop, Wrk(f"http://127.0.0.1:{port}/") as wrk:
        wait_for(lambda: sum(r["restarts"] for r in master.status().values()) >= 6, 30,
                 message="6 recycles by max_requests")
        wrk.assert_clean()
        loop.wait_requests(20)
    loop.assert_clean()
    rows = master.status().values()
    recycled = [r for r in rows if r["restarts"]]
    assert recycled and all(r["reason"] == "max_requests" and r["last_exit"] == "exit 0" for r in recycled), rows


def test_sigkill_of_a_worker_refuses_no_connection(start_master):
    port = free_port()
    master = start_master(web_config(f"127.0.0.1:{port}"))
    pids = master.wait_running(4)
    with ClientLoop(lambda: ("127.0.0.1", port), threads=3) as loop, \
            Wrk(f"http://127.0.0.1:{port}/", 3) as wrk:
        loop.wait_requests(50)
        os.kill(pids["web"], signal.SIGKILL)
        wait_for(lambda: master.pids()["web"] not in (None, pids["web"]), 10, message="web back")
        loop.wait_requests(50)
        result = wrk.result()
    # Connections web had accepted may fail; nothing queued in the backlog may be refused.
    assert result["connect"] == 0, result["output"]
    assert loop.errors["ConnectionRefusedError"] == 0, dict(loop.errors)
    assert sum(loop.errors.values()) <= 10, dict(loop.errors)
    assert set(loop.statuses) == {200}


def test_bind_change_moves_clients_and_the_old_address_serves_until_its_last_worker(start_master):
    old_port, new_port = free_port(), free_port()
    master = start_master(web_config(f"127.0.0.1:{old_port}"))
    old = master.wait_running(4)
    target = [("127.0.0.1", old_port)]
    with ClientLoop(lambda: target[0]) as loop:
        loop.wait_requests(20)
        master.write(web_config(f"127.0.0.1:{new_port}"))

        def new_answers() -> bool:
            try:
                return http_get(("127.0.0.1", new_port)) == 200
            except OSError:
                return False
        wait_for(new_answers, 15, message="the new address to answer")
        assert http_get(("127.0.0.1", old_port)) == 200  # old workers still serve the old socket
        target[0] = ("127.0.0.1", new_port)
        wait_for(all_replaced(master, old, 4), 20, message="every worker on the new socket")
        loop.wait_requests(20)
    loop.assert_clean()
    wait_for(lambda: [s["address"] for s in master.call("status")["sockets"]] == [f"127.0.0.1:{new_port}"],
             10, message="orch status to show only the new socket")

    def old_closed() -> bool:
        try:
            http_get(("127.0.0.1", old_port), timeout=1)
        except ConnectionRefusedError:
            return True
        return False
    wait_for(old_closed, 10, message="the old socket to close after its last worker")


@pytest.mark.parametrize("family", ["ipv6", "unix"])
def test_rolling_restart_over_ipv6_and_unix_sockets(start_master, tmp_path, family):
    if family == "ipv6":
        port = free_port(socket.AF_INET6, "::1")
        bind, address, url = f"[::1]:{port}", ("::1", port), f"http://[::1]:{port}/"
    else:
        path = tmp_path / "run" / "web.sock"
        bind, address, url = "unix:run/web.sock", str(path), None
    master = start_master(web_config(bind, socket_extra='mode = "0660"' if family == "unix" else ""))
    old = master.wait_running(4)
    if family == "unix":
        assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o660
    with ClientLoop(lambda: address, threads=3) as loop:
        wrk = Wrk(url, 3) if url else None
        loop.wait_requests(20)
        assert orch("restart", "--rolling", "template:web", "-c", str(master.config)).returncode == 0
        wait_for(all_replaced(master, old, 4), 20, message="a rolling restart")
        loop.wait_requests(20)
        if wrk is not None:
            with wrk:
                wrk.assert_clean()
    loop.assert_clean()
    assert master.terminate() == 0
    if family == "unix":
        assert not path.exists()  # the master removes the socket file it made


PYTHON_WORKER = '''
import os, select
from orchestrator.worker import Worker

class Web(Worker):
    def run(self):
        listener = self.sockets["web"]
        if not select.select([listener], [], [], 0.2)[0]:
            return False
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return False  # another worker took it
        with conn:
            conn.recv(4096)
            body = "%d %s %s %s %d" % (os.getpid(), os.environ["LISTEN_PID"], os.environ["LISTEN_FDNAMES"],
                                       ",".join(sorted(self.sockets)), self.sockets["web"].fileno())
            conn.sendall(("HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body)).encode())
        return True
'''


def _two_bodies(port: int) -> list[str]:
    """Two requests at once: a worker serves one connection at a time, so each gets its own."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    bodies = []
    for conn in conns:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
    for conn in conns:
        with conn:
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        bodies.append(data.split(b"\r\n\r\n", 1)[1].decode())
    return bodies


def test_python_workers_get_self_sockets_preloaded_or_not(start_master, tmp_path):
    (tmp_path / "webapp.py").write_text(PYTHON_WORKER)
    port = free_port()
    master = start_master(f"""
        [sockets.web]
        bind = "127.0.0.1:{port}"
        [workers.plain]
        target = "webapp:Web"
        sockets = ["web"]
        [workers.zygote]
        target = "webapp:Web"
        preload = true
        sockets = ["web"]
        """)
    pids = master.wait_running(2)
    wait_for(lambda: all(r["ready"] for r in master.status().values()), 10, message="READY=1 from both")
    seen = set()

    def both_answered() -> bool:
        for body in _two_bodies(port):
            pid, listen_pid, names, keys, fd = body.split()
            assert (pid, names, keys, fd) == (listen_pid, "web", "web", "3")  # LISTEN_PID: its own pid
            seen.add(int(pid))
        return seen == {pids["plain"], pids["zygote"]}
    wait_for(both_answered, 10, message=f"both workers to answer (seen {seen})")


def test_systemd_socket_activate_hands_the_socket_to_orch_up_by_name(tmp_path):
    import shutil
    import subprocess
    exe = shutil.which("systemd-socket-activate")
    assert exe, "systemd-socket-activate is not installed: run scripts/test-deps (Debian package systemd)"
    port, unused = free_port(), free_port()
    config = tmp_path / "workers.toml"
    config.write_text(web_config(f"127.0.0.1:{unused}", replicas=2).replace("\n        ", "\n"))
    proc = subprocess.Popen([exe, "-l", f"127.0.0.1:{port}", "--fdname=web", "--", PY, "-m", "orchestrator",
                             "up", "-c", str(config), "--quiet"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "up.err", "wb"))
    try:
        wait_for(lambda: "Listening on" in (tmp_path / "up.err").read_text(), 10, message="socket-activate")
        # The first connection starts orch (socket-activate execs it then): it queues, not refused.
        assert http_get(("127.0.0.1", port), timeout=15) == 200
        with ClientLoop(lambda: ("127.0.0.1", port)) as loop:
            loop.wait_requests(50)
        loop.assert_clean()
        with pytest.raises(ConnectionRefusedError):  # the config's own address was never bound
            http_get(("127.0.0.1", unused), timeout=2)
        assert "adopted from systemd" in (tmp_path / "up.err").read_text()
        with socket.socket(socket.AF_UNIX) as control:  # the full status, sockets included
            control.settimeout(10)
            control.connect(str(Master.folder_of(config) / "orch.sock"))
            control.sendall(b'{"cmd": "status", "args": {}}\n')
            sockets = json.loads(control.makefile("rb").readline())["result"]["sockets"]
        assert [(s["name"], s["adopted"], s["retired"]) for s in sockets] == [("web", True, False)], sockets
        result = orch("status", "--json", "-c", str(config))
        assert result.returncode == 0 and result.stdout.count('"running"') == 2, result.stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_killed_spawner_takes_the_workers_but_the_socket_queues_until_new_ones_serve(start_master):
    port = free_port()
    master = start_master(web_config(f"127.0.0.1:{port}"))
    old = master.wait_running(4)
    spawner = next(p for p in master.descendants() if "spawner" in " ".join(p.cmdline()))
    with ClientLoop(lambda: ("127.0.0.1", port), threads=3) as loop:
        loop.wait_requests(20)
        os.kill(spawner.pid, signal.SIGKILL)  # every worker dies with it (PDEATHSIG)
        wait_for(all_replaced(master, old, 4), 20, message="a new spawner and 4 new workers")
        loop.wait_requests(20)
    # The workers were killed with requests in hand; none queued in the master's socket is refused.
    assert loop.errors["ConnectionRefusedError"] == 0, dict(loop.errors)
    assert sum(loop.errors.values()) <= 12 and set(loop.statuses) == {200}, dict(loop.errors)
