"""`orch upgrade` while something is in flight: a reload being expanded, an `orch diff`
owed its answer, dashboard clients (a page's stream, an action whose request is still
arriving). Nothing makes the upgrade wait or refuse, and no client sees EOF: the reload
and the diff are asked again of the new master (which first adopts the fleet the old one
ran), the dashboard's connections cross exec (handover/capture.py, handover/resume.py).
Real masters, real exec, real HTTP clients."""

from __future__ import annotations

import compileall
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

import orchestrator

from conftest import orch, wait_for
from servers import free_port

PY = sys.executable
# Tens of ms of rendering per value (test_render_budget.py): three values an instance, 50
# instances, seconds of expansion in 20 ms slices. The upgrade is held after its proof by a
# hook waiting on a gate file (an upgrade waits for hooks), the slow work is started, then
# the gate opens: the master execs while that work is surely still going.
SLOW = "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}"
KEEP = """
    [orchestrator]
    watch = {watch}
    [workers.keep]
    command = "sleep 300"
    stop_timeout = "2s"
    [workers.gater]
    command = "sleep 300"
    [[hooks]]
    on = ["stopped"]
    command = ["sh", "-c", "while [ ! -e {gate} ]; do sleep 0.02; done"]
    timeout = "60s"
    """
SLOW_TEMPLATE = f"""
    [workers.slow]
    command = "sleep 300"
    matrix = {{ n = "{{{{ range(50) | list }}}}" }}
    env = {{ A = "{SLOW}", B = "{SLOW}", C = "{SLOW}" }}
    stop_timeout = "2s"
    """


def _keep(tmp_path: Path, watch: bool = False) -> str:
    return KEEP.format(watch=str(watch).lower(), gate=tmp_path / "gate")


def package_copy(tmp_path: Path) -> Path:
    """A byte-compiled copy of the orchestrator package under test (put first on PYTHONPATH):
    the proof then loads .pyc files instead of compiling every module (as test_upgrade.py's)."""
    tree = tmp_path / "tree"
    shutil.copytree(Path(orchestrator.__file__).parent, tree / "orchestrator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(tree / "orchestrator"), quiet=1)
    return tree


def _upgrade_around(master, tmp_path: Path, during: Callable[[], None]) -> None:
    """SIGUSR2; once proven, the upgrade waits for the gate's hook; `during` starts what
    must be in flight at the exec; then the gate opens and the master execs."""
    os.kill(master.pid, signal.SIGUSR2)
    wait_for(lambda: "upgrade requested" in master.stderr(), 10, message="the upgrade to begin")
    master.call("stop", patterns=["gater"])  # its hook holds the upgrade once proven
    wait_for(lambda: "can take over" in master.stderr() or not master.call("status")["versions"]["upgrading"],
             60, message="the proof")
    assert "can take over" in master.stderr(), f"the upgrade ended before its exec:\n{master.stderr()[-2000:]}"
    assert "(upgrade 1)" not in master.stderr(), "the hook did not hold the upgrade"
    during()
    (tmp_path / "gate").touch()
    wait_for(lambda: "(upgrade 1)" in master.stderr() or "refused" in master.stderr(), 60,
             message="the upgrade")
    assert "(upgrade 1)" in master.stderr(), master.stderr()[-2000:]


def _log_order(text: str, *marks: str) -> list[int]:
    found = [text.find(mark) for mark in marks]
    assert -1 not in found, f"{[m for m, i in zip(marks, found) if i < 0]} not in the master's log:\n{text[-3000:]}"
    return found


@pytest.mark.slow
def test_a_reload_being_expanded_crosses_the_upgrade_and_its_client_is_answered(start_master, tmp_path,
                                                                                 monkeypatch):
    """An `orch reload` of a saved file whose expansion takes seconds: the upgrade neither
    waits for it nor refuses the changed file; the new master adopts exactly the two
    instances the old one ran, then reloads and answers the waiting `orch reload`."""
    monkeypatch.setenv("PYTHONPATH", str(package_copy(tmp_path)))
    master = start_master(_keep(tmp_path))
    keep = master.wait_running(2)["keep"]
    reload: list[subprocess.Popen] = []

    def during() -> None:
        master.write(_keep(tmp_path) + SLOW_TEMPLATE)
        reload.append(subprocess.Popen([PY, "-m", "orchestrator", "reload", "-c", str(master.config)],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        wait_for(lambda: master.call("status")["reloading"], 10, message="the slow reload to start")
    try:
        _upgrade_around(master, tmp_path, during)
        assert reload[0].wait(60) == 0, reload[0].stdout.read()
    finally:
        if reload and reload[0].poll() is None:
            reload[0].kill()
    said = reload[0].stdout.read()
    assert "applied: 50 started" in said, said
    log = master.stderr()
    took, applied = _log_order(log, "took over 2 instances", "reload (orch reload): +50")
    assert took < applied, "the reload was applied before the upgrade, not after it"
    rows = master.status()
    assert rows["keep"]["pid"] == keep and rows["keep"]["restarts"] == 0
    assert len(rows) == 52 and all(r["restarts"] == 0 for r in rows.values()), rows


@pytest.mark.slow
def test_a_saved_file_being_reloaded_is_applied_after_the_upgrade(start_master, tmp_path, monkeypatch):
    """The same with the watcher's reload (no client): the upgrade carries it as a queued
    reload, and the new master applies the saved file once it has taken over."""
    monkeypatch.setenv("PYTHONPATH", str(package_copy(tmp_path)))
    master = start_master(_keep(tmp_path, watch=True))
    keep = master.wait_running(2)["keep"]

    def during() -> None:
        master.write(_keep(tmp_path, watch=True) + SLOW_TEMPLATE)
        wait_for(lambda: master.call("status")["reloading"], 10, message="the save's reload to start")
    _upgrade_around(master, tmp_path, during)
    wait_for(lambda: len(master.pids()) == 52, 30, message="the saved file applied by the new master")
    took, applied = _log_order(master.stderr(), "took over 2 instances", ", queued): +50")
    assert took < applied
    assert master.pids()["keep"] == keep


@pytest.mark.slow
def test_an_orch_diff_owed_its_answer_is_answered_by_the_new_master(start_master, tmp_path, monkeypatch):
    """`orch diff` of a file that takes seconds to expand, asked just before the exec: the
    upgrade does not wait for it, and the same connection gets the diff's answer from the
    new master (not EOF)."""
    monkeypatch.setenv("PYTHONPATH", str(package_copy(tmp_path)))
    master = start_master(_keep(tmp_path))
    master.wait_running(2)
    master.write(_keep(tmp_path) + SLOW_TEMPLATE)
    answer: list = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(master.socket))

        def read() -> None:
            line = sock.makefile("rb").readline()
            answer.extend([line, time.time()])

        def during() -> None:
            sock.sendall(json.dumps({"cmd": "diff", "args": {}}).encode() + b"\n")
            master.call("ping")  # after the diff's request was read: its expansion has begun
            threading.Thread(target=read, daemon=True).start()
        _upgrade_around(master, tmp_path, during)
        wait_for(lambda: answer, 60, message="the diff's answer")
    line, arrived = answer
    assert line, "the diff's client saw EOF"
    reply = json.loads(line)
    assert reply["ok"] and reply["result"]["start"] == 50, reply
    execs = re.search(r"^(\S+ \S+),(\d+) orch INFO upgrade: master \d+ re-executes", master.stderr(), re.M)
    assert execs, master.stderr()[-2000:]
    execed = time.mktime(time.strptime(execs[1], "%Y-%m-%d %H:%M:%S")) + int(execs[2]) / 1000
    assert arrived > execed, "the old master answered the diff: the upgrade waited for it"
    assert "control commands are waiting" not in master.stderr()


@pytest.mark.slow
def test_a_control_request_half_sent_at_the_upgrade_is_answered_by_the_new_master(start_master, tmp_path):
    """A client that sent half its request line when the upgrade came is not closed after
    the drain's second: the new master reads on and answers it on the same connection."""
    master = start_master(_keep(tmp_path))
    master.wait_running(2)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(master.socket))
        sock.sendall(b'{"cmd": "status", ')
        master.call("ping")  # the half line was read by now
        upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        sock.sendall(b'"args": {}}\n')
        line = sock.makefile("rb").readline()
    assert line, "the half-sent request's client saw EOF"
    reply = json.loads(line)
    assert reply["ok"] and reply["result"]["versions"]["upgrades"] == 1, reply


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
            time.sleep(0.2)  # a restart at a time: the upgrade finds its quiet moment between two
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


@pytest.mark.slow
def test_a_real_browser_page_stays_live_through_two_upgrades(start_master, tmp_path):
    """Chromium on the dashboard through two upgrades: its EventSource never errs (the page
    never shows "reconnecting"), and a restart clicked after each upgrade shows live."""
    from browser import chromium
    port = free_port()
    master = start_master(_dashboard_config(port))
    master.wait_running(3)
    url = orch("dashboard", "-c", str(master.config)).stdout.strip()
    with chromium(tmp_path / "profile") as driver:
        driver.get(url)

        def row(name: str):
            return driver.find_element("css selector", f'tr[data-name="{name}"]')
        wait_for(lambda: driver.find_elements("css selector", 'tr[data-name="w-1"]'), 20, message="w-1's row")
        wait_for(lambda: driver.find_element("id", "conn").text == "live", 10, message="the page to be live")
        driver.execute_script("""
            window.conn = [];
            const c = document.getElementById('conn');
            new MutationObserver(() => window.conn.push(c.textContent))
              .observe(c, {childList: true, characterData: true, subtree: true});""")
        for round in range(2):
            upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
            assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
            before = master.pids()["w-1"]
            row("w-1").find_element("css selector", 'button[data-action="restart"]').click()
            wait_for(lambda: row("w-1").get_attribute("data-pid") not in ("", str(before))
                     and row("w-1").get_attribute("data-state") == "running", 20,
                     message=f"w-1's new pid after upgrade {round + 1}")
            assert master.pids()["w-1"] == int(row("w-1").get_attribute("data-pid"))
        changes = driver.execute_script("return window.conn")
        assert changes == [], f"the page's stream broke: {changes}"
        assert driver.find_element("id", "conn").text == "live"
    assert master.call("status")["versions"]["upgrades"] == 2
