"""The web dashboard (`[orchestrator] http`) against a real master: the token guards every
request, actions are POSTs from the page's own origin, and a real headless Chromium sees the
fleet change live (tests/browser.py)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from browser import chromium
from conftest import Master, orch, wait_for
from servers import free_port

LOOP = "import time\\nwhile True:\\n print('tick', flush=True); time.sleep(0.5)"


def _config(port: int, replicas: int = 3, extra: str = "", min_uptime: str = "0.2s") -> str:
    return f"""
        [orchestrator]
        http = "127.0.0.1:{port}"
        {extra}
        [workers.w]
        command = ["python3", "-c", "{LOOP}"]
        replicas = {replicas}
        min_uptime = "{min_uptime}"
        backoff = {{ initial = "1s" }}
        """


class Site:
    """The dashboard of one master, asked over plain HTTP."""

    def __init__(self, master: Any, port: int):
        self.master, self.port = master, port
        self.url = orch("dashboard", "-c", str(master.config)).stdout.strip()
        self.token = self.url.split("token=", 1)[1]

    def request(self, method: str, path: str, token: str | None = "", headers: dict | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); `token` "" means the right one, None none at all."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token or self.token}"
        conn.request(method, path, headers=sent)
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, body


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One master for the tests that leave its fleet as they found it (a master costs seconds)."""
    folder = tmp_path_factory.mktemp("dashboard")
    port = free_port()
    config = folder / "workers.toml"
    config.write_text(textwrap.dedent(_config(port)))
    stderr = folder / "master.err"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-c", str(config), "--quiet"],
                            cwd=folder, stdout=subprocess.DEVNULL, stderr=open(stderr, "wb"),
                            start_new_session=True)
    master = Master(folder, config, proc, stderr)
    try:
        def answering() -> bool:
            assert proc.poll() is None, f"the master exited: {stderr.read_text()}"
            try:
                return bool(master.call("ping"))
            except (OSError, RuntimeError):
                return False
        wait_for(answering, 15, message="the master to answer")
        master.wait_running(3)
        yield Site(master, port)
    finally:
        leftovers = master.descendants()
        proc.kill()
        proc.wait(10)
        for child in leftovers:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def test_orch_dashboard_prints_the_address_with_its_token_kept_in_a_0600_file(site: Site):
    assert site.url.startswith(f"http://127.0.0.1:{site.port}/?token=")
    token_file = site.master.socket.with_name("orch.sock.http-token")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == site.token and len(site.token) >= 40
    shown = json.loads(orch("dashboard", "--json", "-c", str(site.master.config)).stdout)
    assert shown["token_file"] == str(token_file)


@pytest.mark.parametrize("token", [None, "wrong-token-of-the-right-length-0123456789ab"])
def test_without_the_token_every_request_gets_a_bare_401_and_changes_nothing(site: Site, token):
    before = site.master.pids()
    for method, path in [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/api/stream"),
                         ("GET", "/api/instance?name=w"), ("GET", "/api/log?name=w"), ("GET", "/nothing"),
                         ("POST", "/api/restart?name=w"), ("POST", "/api/stop?template=w"),
                         ("GET", f"/?token={token or ''}")]:
        status, headers, body = site.request(method, path, token=token)
        assert (status, body) == (401, b"401 Unauthorized\n"), (method, path)
        assert "set-cookie" not in headers and "access-control-allow-origin" not in headers
    # a cookie with the wrong value is no better
    status, _, _ = site.request("POST", "/api/restart?name=w", token=None,
                                headers={"Cookie": f"orch_token_{site.port}=nope"})
    assert status == 401
    assert site.master.pids() == before


def test_the_token_link_sets_a_strict_httponly_cookie_and_drops_the_token(site: Site):
    status, headers, body = site.request("GET", f"/?token={site.token}", token=None)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"orch_token_{site.port}={site.token};")
    flags = {part.strip() for part in cookie.split(";")[1:]}
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= flags
    assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
    status, headers, body = site.request("GET", "/", token=None, headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"/static/app.js" in body and "access-control-allow-origin" not in headers
    assert b"http://" not in body.replace(b"http://www.w3.org", b"")  # nothing from elsewhere


def test_actions_are_post_only_and_never_cross_site(site: Site):
    before = site.master.pids()
    status, headers, _ = site.request("GET", "/api/restart?name=w")
    assert status == 405 and headers["allow"] == "POST"
    for foreign in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Origin": f"http://localhost:{site.port + 1}"}):
        status, _, _ = site.request("POST", "/api/restart?name=w", headers=foreign)
        assert status == 403, foreign
    status, _, _ = site.request("POST", "/api/restart?name=w*")  # a name, never a glob from a URL
    assert status == 404
    assert site.master.pids() == before
    same = {"Origin": f"http://127.0.0.1:{site.port}", "Sec-Fetch-Site": "same-origin"}
    status, _, body = site.request("POST", "/api/restart?name=w", headers=same)
    assert status == 200 and json.loads(body)["instances"] == ["w"]
    wait_for(lambda: site.master.pids()["w"] not in (None, before["w"]), 10, message="w restarted")


def test_template_actions_go_through_the_control_commands(site: Site):
    status, _, body = site.request("POST", "/api/stop?template=w")
    assert status == 200 and sorted(json.loads(body)["instances"]) == ["w", "w-1", "w-2"]
    wait_for(lambda: {r["state"] for r in site.master.status().values()} == {"stopped"}, 10,
             message="every instance stopped")
    assert all(r["held"] for r in site.master.status().values()), "held like orch stop holds"
    status, _, _ = site.request("POST", "/api/start?template=w")
    assert status == 200
    site.master.wait_running(3)


def test_the_detail_api_gives_an_hour_of_samples_the_events_and_the_log_tail(site: Site):
    wait_for(lambda: "tick" in site.request("GET", "/api/log?name=w-1&lines=3")[2].decode(), 10,
             message="w-1's log")
    log = json.loads(site.request("GET", "/api/log?name=w-1&lines=3")[2])
    assert 1 <= len(log["lines"]) <= 3 and set(log["lines"]) == {"tick"}
    # A new instance gets its first sample at the next one-second tick.
    detail = wait_for(lambda: (d := json.loads(site.request("GET", "/api/instance?name=w-1")[2]))
                      ["history"]["ts"] and d, 5, message="w-1's first sample")
    assert detail["row"]["pid"] == site.master.pids()["w-1"] and detail["row"]["rss"] > 0
    assert any(e["kind"] == "started" for e in detail["events"])
    assert site.request("GET", "/api/instance?name=nope")[0] == 404


@pytest.mark.slow
def test_a_given_token_file_must_be_owner_only(start_master, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("a-token-of-our-own-choosing-123\n")
    token_file.chmod(0o644)
    config = tmp_path / "workers.toml"
    config.write_text(_config(free_port(), 1, f'http_token_file = "{token_file}"').replace("\n        ", "\n"))
    result = orch("up", "-c", str(config), "--quiet", timeout=30)
    assert result.returncode != 0 and "http_token_file" in result.stderr and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr
    token_file.chmod(0o600)
    port = free_port()
    master = start_master(_config(port, 1, f'http_token_file = "{token_file}"'))
    site = Site(master, port)
    assert site.token == "a-token-of-our-own-choosing-123"
    assert site.request("GET", "/api/instance?name=w")[0] == 200


@pytest.mark.slow
def test_a_real_browser_sees_the_fleet_live_and_restarts_an_instance(start_master, tmp_path: Path):
    port = free_port()
    master = start_master(_config(port))
    master.wait_running(3)
    site = Site(master, port)
    with chromium(tmp_path / "profile") as driver:
        driver.get(site.url)
        assert driver.current_url == f"http://127.0.0.1:{port}/", "the token left the address"
        def rows() -> dict[str, Any]:
            return {e.get_attribute("data-name"): e for e in driver.find_elements("css selector", "tr[data-name]")}
        wait_for(lambda: set(rows()) == {"w", "w-1", "w-2"}, 20, message="every instance's row")
        # every state and pid the row shows, recorded by the page itself: a reload would lose it
        driver.execute_script("""
            window.seen = [];
            const tr = document.querySelector('tr[data-name="w"]');
            new MutationObserver(() => window.seen.push(tr.dataset.state + ' ' + tr.dataset.pid))
              .observe(tr, {attributes: true, attributeFilter: ['data-state', 'data-pid']});""")
        old = master.pids()["w"]
        os.kill(old, signal.SIGKILL)

        def replaced() -> bool:
            pid = rows()["w"].get_attribute("data-pid")
            return rows()["w"].get_attribute("data-state") == "running" and pid not in ("", str(old))
        wait_for(replaced, 15, message="w's row showing a new pid")
        seen = driver.execute_script("return window.seen")
        assert any(not s.startswith("running") for s in seen), f"the row never left running: {seen}"
        assert rows()["w"].get_attribute("data-pid") == str(master.pids()["w"])
        feed = driver.find_element("id", "feed").text
        assert "exited" in feed and "SIGKILL" in feed, feed

        before = master.pids()["w-1"]
        rows()["w-1"].find_element("css selector", 'button[data-action="restart"]').click()
        wait_for(lambda: rows()["w-1"].get_attribute("data-pid") not in ("", str(before))
                 and rows()["w-1"].get_attribute("data-state") == "running", 15, message="w-1's new pid")
        assert master.pids()["w-1"] == int(rows()["w-1"].get_attribute("data-pid"))
        assert driver.execute_script("return window.seen !== undefined"), "the page was reloaded"

        rows()["w"].find_element("css selector", "td.name").click()  # its panel: charts (its exit marked), log
        wait_for(lambda: "tick" in driver.find_element("id", "d-log").text, 15, message="w's log tail")
        assert "exited" in driver.find_element("id", "d-events").text
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


class Events:
    """A raw server-sent events stream of the dashboard, read as a browser reads it."""

    def __init__(self, site: Site, query: str):
        self.sock = socket.create_connection(("127.0.0.1", site.port), timeout=5)
        self.sock.sendall(f"GET /api/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n"
                          f"Authorization: Bearer {site.token}\r\n\r\n".encode())
        self.buffer = b""
        self.head = self._until(b"\r\n\r\n")

    def _until(self, mark: bytes) -> bytes:
        while mark not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "the stream ended"
            self.buffer += data
        part, self.buffer = self.buffer.split(mark, 1)
        return part

    def next(self, kind: str, timeout: float = 5.0) -> Any:
        """The data of the next event of `kind`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            block = self._until(b"\n\n").decode()
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if fields.get("event") == kind:
                return json.loads(fields["data"])
        raise AssertionError(f"no {kind} event in {timeout}s")

    def close(self) -> None:
        self.sock.close()


def test_a_page_stream_shows_its_rows_and_each_state_change_of_them(site: Site):
    stream = Events(site, "offset=1&limit=1")
    try:
        assert b"text/event-stream" in stream.head and b"Access-Control" not in stream.head
        assert [r["seq"] for r in stream.next("journal")], "the page starts with recent events"
        page = stream.next("page")
        assert (page["total"], page["fleet"], [r["name"] for r in page["rows"]]) == (3, 3, ["w-1"])
        assert page["counts"] == {"running": 3}
        old = site.master.pids()["w-1"]
        os.kill(old, signal.SIGKILL)
        seen = [stream.next("row")]
        while seen[-1]["state"] != "running":
            seen.append(stream.next("row"))
        assert seen[0]["state"] != "running" and seen[0]["pid"] is None, seen
        assert seen[-1]["pid"] not in (None, old) and seen[-1]["restarts"] >= 1
    finally:
        stream.close()
    filtered = Events(site, "q=w-2")
    try:
        page = filtered.next("page")
        assert (page["total"], [r["name"] for r in page["rows"]]) == (1, ["w-2"])
    finally:
        filtered.close()


@pytest.mark.slow
def _hammer(ask: Callable[[], Any], answers: list, errors: list, stop: threading.Event) -> None:
    """Ask again and again until `stop`; every answer and every failure is kept."""
    while not stop.is_set():
        try:
            answers.append(ask())
        except Exception as exc:  # noqa: BLE001 - a reset, a refusal, an empty reply: all count
            errors.append(repr(exc))


def _scrape(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    reply = conn.getresponse()
    reply.read()
    conn.close()
    return reply.status


def _stream_end(site: Site, streams: list) -> str:
    """Follow a page's stream until the master closes it (or the test, through `streams`).
    Not `Events`: a stream asked for during an exec waits for the new master, longer than 5 s
    on a loaded machine."""
    sock = socket.create_connection(("127.0.0.1", site.port), timeout=30)
    streams.append(sock)
    try:
        sock.sendall(f"GET /api/stream?offset=0&limit=1 HTTP/1.1\r\nHost: 127.0.0.1:{site.port}\r\n"
                     f"Authorization: Bearer {site.token}\r\n\r\n".encode())
        head = sock.recv(65536)  # empty: ended by the test (or by an upgrade) before its head
        assert not head or head.startswith(b"HTTP/1.1 200"), head[:100]
        while sock.recv(65536):
            pass
        return "closed"
    finally:
        sock.close()


@pytest.mark.slow
def test_an_upgrade_keeps_the_dashboards_port_and_token(start_master):
    """Clients of every server the master runs (the dashboard, a page's stream, the metrics
    endpoint, the control socket) ask all through two upgrades: not one request fails, since
    the old master stops accepting and answers what it accepted before it execs (handover/drain.py)."""
    port, metrics = free_port(), free_port()
    master = start_master(_config(port, 1, extra=f'metrics = "127.0.0.1:{metrics}"'))
    master.wait_running(1)
    site = Site(master, port)
    stop, answers, errors, streams = threading.Event(), [], [], []
    askers = [lambda: site.request("GET", "/api/instance?name=w")[0]] * 3 + \
        [lambda: _scrape(metrics), lambda: master.call("ping") and 200, lambda: _stream_end(site, streams)]
    threads = [threading.Thread(target=_hammer, args=(ask, answers, errors, stop), daemon=True) for ask in askers]
    for thread in threads:
        thread.start()
    try:
        for _ in range(2):
            wait_for(lambda: len(answers) > 20, 10, message="clients to be answered")
            asked = len(answers)
            upgrade = orch("upgrade", "-c", str(master.config))
            assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
            wait_for(lambda: len(answers) > asked + 20, 10, message="the new master to answer")
    finally:
        stop.set()
        for sock in streams:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the last stream ends now
            except OSError:
                pass  # closed already
        for thread in threads:
            thread.join(15)
    assert not errors, f"{len(errors)} of {len(answers) + len(errors)} requests failed: {errors[:5]}"
    assert set(answers) == {200, "closed"}, set(answers)
    assert Site(master, port).token == site.token and master.proc.poll() is None
