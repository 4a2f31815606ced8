"""`orch upgrade` while something is in flight: a reload being expanded, an `orch diff`
owed its answer, dashboard clients (a page's stream, an action whose request is still
arriving). Nothing makes the upgrade wait or refuse, and no client sees EOF: the reload
and the diff are asked again of the new master (which first adopts the fleet the old one
ran), the dashboard's connections cross exec (handover/capture.py, handover/resume.py).
Real masters, real exec, real HTTP clients."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import orch, wait_for
from servers import free_port

PY = sys.executable
# Tens of ms of rendering per value (test_render_budget.py): three values an instance, 40
# instances, seconds of expansion in 20 ms slices: still going while the upgrade runs.
SLOW = "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}"
KEEP = """
    [orchestrator]
    watch = false
    {extra}
    [workers.keep]
    command = "sleep 300"
    stop_timeout = "2s"
    """
SLOW_TEMPLATE = f"""
    [workers.slow]
    command = "sleep 300"
    matrix = {{ n = "{{{{ range(40) | list }}}}" }}
    env = {{ A = "{SLOW}", B = "{SLOW}", C = "{SLOW}" }}
    stop_timeout = "2s"
    """


def _log_order(text: str, *marks: str) -> list[int]:
    found = [text.find(mark) for mark in marks]
    assert -1 not in found, f"{[m for m, i in zip(marks, found) if i < 0]} not in the master's log:\n{text[-3000:]}"
    return found


@pytest.mark.slow
def test_a_reload_being_expanded_crosses_the_upgrade_and_its_client_is_answered(start_master):
    """An `orch reload` of a saved file whose expansion takes seconds: the upgrade neither
    waits for it nor refuses the changed file; the new master adopts exactly the one
    instance the old one ran, then reloads and answers the waiting `orch reload`."""
    master = start_master(KEEP.format(extra=""))
    keep = master.wait_running(1)["keep"]
    master.write(KEEP.format(extra="") + SLOW_TEMPLATE)
    config = str(master.config)
    reload = subprocess.Popen([PY, "-m", "orchestrator", "reload", "-c", config],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: master.call("status")["reloading"], 10, message="the slow reload to start")
        upgrade = orch("upgrade", "-c", config, timeout=60)
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        assert reload.wait(60) == 0, reload.stdout.read()
    finally:
        if reload.poll() is None:
            reload.kill()
    said = reload.stdout.read()
    assert "+40" in said or "40" in said, said
    log = master.stderr()
    took, applied = _log_order(log, "took over 1 instances", "reload (orch reload): +40")
    assert took < applied, "the reload was applied before the upgrade, not after it"
    assert "a reload is being expanded" not in log
    rows = master.status()
    assert rows["keep"]["pid"] == keep and rows["keep"]["restarts"] == 0
    assert len(rows) == 41 and all(r["restarts"] == 0 for r in rows.values()), rows
    assert master.call("status")["versions"]["upgrades"] == 1


@pytest.mark.slow
def test_a_saved_file_being_reloaded_is_applied_after_the_upgrade(start_master):
    """The same with the watcher's reload (no client): the upgrade carries it as a queued
    reload, and the new master applies the saved file once it has taken over."""
    master = start_master(KEEP.format(extra="").replace("watch = false", "watch = true"))
    keep = master.wait_running(1)["keep"]
    master.write(KEEP.format(extra="").replace("watch = false", "watch = true") + SLOW_TEMPLATE)
    wait_for(lambda: master.call("status")["reloading"], 10, message="the save's reload to start")
    upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    wait_for(lambda: len(master.pids()) == 41, 30, message="the saved file applied by the new master")
    log = master.stderr()
    took, applied = _log_order(log, "took over 1 instances", ", queued): +40")
    assert took < applied
    assert master.pids()["keep"] == keep


@pytest.mark.slow
def test_an_orch_diff_owed_its_answer_is_answered_by_the_new_master(start_master):
    """`orch diff` of a file that takes seconds to expand, asked just before the upgrade:
    the upgrade does not wait for it, and the same connection gets the diff's answer
    from the new master (not EOF)."""
    master = start_master(KEEP.format(extra=""))
    master.wait_running(1)
    master.write(KEEP.format(extra="") + SLOW_TEMPLATE)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(master.socket))
        sock.sendall(json.dumps({"cmd": "diff", "args": {}}).encode() + b"\n")
        upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
        upgraded = time.monotonic()
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        line = sock.makefile("rb").readline()
        answered = time.monotonic()
    assert line, "the diff's client saw EOF"
    reply = json.loads(line)
    assert reply["ok"] and reply["result"]["start"] == 40, reply
    assert upgraded <= answered
    assert "control commands are waiting" not in master.stderr()
    assert master.call("status")["versions"]["upgrades"] == 1


# --- the dashboard ----------------------------------------------------------------------------
def _dashboard_config(port: int) -> str:
    return f"""
        [orchestrator]
        watch = false
        http = "127.0.0.1:{port}"
        [workers.w]
        command = "sleep 300"
        replicas = 3
        min_uptime = "0.1s"
        stop_timeout = "2s"
        """


class Page:
    """A page's server-sent events stream, read in a thread: every journal record's seq,
    and whether (and how) it ended."""

    def __init__(self, port: int, token: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(f"GET /api/stream?offset=0&limit=2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Authorization: Bearer {token}\r\n\r\n".encode())
        self.seqs: list[list[int]] = []  # one list per journal event
        self.kinds: list[str] = []
        self.ended: str | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.ended = "EOF"
                    return
                buffer += data
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.decode().splitlines() if ": " in line)
                    if "event" in fields:
                        self.kinds.append(fields["event"])
                    if fields.get("event") == "journal":
                        self.seqs.append([r["seq"] for r in json.loads(fields["data"])])
        except OSError as exc:
            self.ended = self.ended or repr(exc)

    def flat(self) -> list[int]:
        return [seq for event in self.seqs for seq in event]


def _post(port: int, token: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, headers={"Authorization": f"Bearer {token}"})
    reply = conn.getresponse()
    reply.read()
    conn.close()
    return reply.status


@pytest.mark.slow
def test_dashboard_pages_and_actions_cross_two_upgrades(start_master):
    """A page's stream goes on through two upgrades with every journal record once, in
    order (contiguous seqs); restarts asked from the dashboard all the while all get 200;
    an action whose request is still arriving at the upgrade is answered by the new master."""
    port = free_port()
    master = start_master(_dashboard_config(port))
    master.wait_running(3)
    token = orch("dashboard", "-c", str(master.config)).stdout.strip().split("token=", 1)[1]
    page = Page(port, token)
    stop, answers, errors = threading.Event(), [], []

    def restarts() -> None:
        while not stop.is_set():
            try:
                answers.append(_post(port, token, "/api/restart?name=w-1"))
            except Exception as exc:  # noqa: BLE001 - a reset, an EOF, a refusal: all count
                errors.append(repr(exc))
            time.sleep(0.05)
    hammer = threading.Thread(target=restarts, daemon=True)
    hammer.start()
    try:
        wait_for(lambda: len(page.seqs) >= 2, 10, message="the page's first records")
        for round in range(2):
            # an action whose body has not arrived when the old master execs
            slow = socket.create_connection(("127.0.0.1", port), timeout=60)
            slow.sendall(f"POST /api/restart?name=w-2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                         f"Authorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n".encode())
            asked = len(answers)
            upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
            assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
            slow.sendall(b"{}")
            reply = b""
            while chunk := slow.recv(65536):
                reply += chunk
            slow.close()
            assert reply.startswith(b"HTTP/1.1 200"), f"upgrade {round + 1}: the slow action got {reply[:200]!r}"
            assert b'"instances": ["w-2"]' in reply, reply
            wait_for(lambda: len(answers) > asked + 5, 20, message="restarts answered by the new master")
        assert master.call("status")["versions"]["upgrades"] == 2
    finally:
        stop.set()
        hammer.join(30)
    latest = master.call("events")["seq"]
    wait_for(lambda: page.flat() and page.flat()[-1] >= latest, 10, message="the page to reach the latest record")
    page.sock.close()
    assert page.ended is None, f"the page's stream ended: {page.ended}"
    assert not errors, f"{len(errors)} of {len(errors) + len(answers)} actions failed: {errors[:5]}"
    assert set(answers) == {200}, set(answers)
    seqs = page.flat()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"records lost or doubled: {seqs}"
    assert "dropped" not in page.kinds and page.kinds.count("page") >= 2, page.kinds
