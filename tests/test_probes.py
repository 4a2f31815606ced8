"""Health probes (issue 27): the pure verdicts as tables, the config's validation, and real
masters probing real tiny HTTP servers: a slow starter, a readiness flip, a deadlock that
liveness replaces, and a rolling restart that waits for readiness."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import orch, wait_for
from servers import free_port
from orchestrator.config.probes import ProbeDecl, parse_probes, resolve
from orchestrator.supervise.probe_checks import status_verdict
from orchestrator.supervise.probes import ProbeState, Verdict, decide, gated, running

# --- pure: the verdicts -----------------------------------------------------------------

# (role, successes, failures, results in order, verdicts in order)
TABLE = [
    ("readiness", 1, 3, "+", "R"),
    ("readiness", 2, 3, "++", ".R"),
    ("readiness", 1, 2, "+-+--", "R...U"),         # one failure is not enough; two in a row is
    ("readiness", 1, 1, "--+-+", "..RUR"),          # not ready before it ever passed: no UNREADY
    ("readiness", 1, 1, "+++", "R.."),              # READY once, not at every pass
    ("liveness", 1, 3, "--+---", ".....X"),         # a pass resets the count
    ("liveness", 1, 1, "+-", ".X"),
    ("startup", 1, 3, "--+", "..S"),
    ("startup", 1, 3, "---", "..X"),
    ("startup", 2, 5, "+-++", "...S"),
]
LETTERS = {Verdict.NONE: ".", Verdict.READY: "R", Verdict.UNREADY: "U", Verdict.RESTART: "X",
           Verdict.STARTED: "S"}


@pytest.mark.parametrize("role,successes,failures,results,expected", TABLE)
def test_verdicts(role: str, successes: int, failures: int, results: str, expected: str) -> None:
    state, got = ProbeState(), ""
    for result in results:
        state, verdict = decide(role, successes, failures, state, result == "+", "HTTP 500 from /")
        got += LETTERS[verdict]
    assert got == expected


def test_a_failure_is_remembered_with_its_words() -> None:
    state, _ = decide("liveness", 1, 3, ProbeState(), False, "timed out after 1s")
    state, _ = decide("liveness", 1, 3, state, True)
    assert (state.last, state.last_failure, state.checks) == ("ok", "timed out after 1s", 2)


def test_startup_runs_alone_until_it_passed_and_gates_readiness() -> None:
    probes = parse_probes({"startup": {"tcp": "127.0.0.1:1"}, "liveness": {"tcp": "127.0.0.1:1"}})
    assert [p.role for p in running(probes, False)] == ["startup"]
    assert [p.role for p in running(probes, True)] == ["liveness"]
    assert gated(probes) and not gated(parse_probes({"liveness": {"tcp": "127.0.0.1:1"}}))


@pytest.mark.parametrize("line,expected,ok", [
    (b"HTTP/1.1 200 OK", None, True), (b"HTTP/1.0 302 Found", None, True),
    (b"HTTP/1.1 500 Internal Server Error", None, False), (b"HTTP/1.1 404 Not Found", 404, True),
    (b"HTTP/1.1 200 OK", 204, False), (b"SSH-2.0-OpenSSH", None, False)])
def test_status_lines(line: bytes, expected: int | None, ok: bool) -> None:
    assert status_verdict(line, "/health", expected)[0] is ok


# --- config -------------------------------------------------------------------------------

@pytest.mark.parametrize("table,message", [
    ({"live": {"tcp": "127.0.0.1:1"}}, "unknown probe 'live'"),
    ({"liveness": {"tcp": "127.0.0.1:1", "http": "http://127.0.0.1/"}}, "exactly one of"),
    ({"liveness": {"tcp": "db.example:5432"}}, "not an IP address"),
    ({"liveness": {"tcp": "127.0.0.1"}}, "HOST:PORT"),
    ({"liveness": {"http": "https://127.0.0.1/"}}, "URL like"),
    ({"liveness": {"tcp": "127.0.0.1:1", "period": "0s"}}, "period: must be from 10ms"),
    ({"liveness": {"tcp": "127.0.0.1:1", "failures": 0}}, "failures: expected a whole number"),
    ({"liveness": {"tcp": "127.0.0.1:1", "status": 200}}, "only an http probe"),
])
def test_bad_probes_are_refused(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_probes(table)


def test_http_target_resolves_to_address_and_path() -> None:
    probe = resolve(ProbeDecl("readiness", "http", ""), "http://localhost:8080/health?deep=1")
    assert (probe.host, probe.port, probe.path) == ("127.0.0.1", 8080, "/health?deep=1")


def test_probe_through_a_shared_socket_is_a_located_error(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "workers.toml"
    config.write_text(f'[sockets.web]\nbind = "0.0.0.0:{port}"\n[workers.web]\ncommand = "sleep 1"\n'
                      f'sockets = ["web"]\nprobes = {{ readiness = {{ tcp = "127.0.0.1:{port}" }} }}\n')
    result = orch("check", "-c", str(config))
    assert result.returncode == 2 and "workers.web.probes" in result.stderr and "shared socket" in result.stderr


@pytest.mark.parametrize("bind,host,port,reaches", [
    ("127.0.0.1:8000", "127.0.0.1", 8000, True), ("0.0.0.0:8000", "127.0.0.1", 8000, True),
    ("[::]:8000", "::1", 8000, True), ("localhost:8000", "127.0.0.1", 8000, True),
    ("127.0.0.2:8000", "127.0.0.1", 8000, False), ("0.0.0.0:8000", "127.0.0.1", 8001, False),
    ("unix:/run/app.sock", "127.0.0.1", 8000, False)])
def test_which_probe_addresses_reach_a_shared_bind(bind: str, host: str, port: int, reaches: bool) -> None:
    from orchestrator.expand.probes import _reaches
    assert _reaches(bind, host, port) is reaches


# --- real masters -----------------------------------------------------------------------

SERVER = '''
import http.server, os, sys, time
port = int(sys.argv[1])
time.sleep(float(os.environ.get("BIND_DELAY", "0")))
began = time.monotonic()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists(f"hang-{port}") and open(f"hang-{port}").read() == str(os.getpid()):
            time.sleep(3600)  # deadlocked: this one-threaded server never answers again
        slow = time.monotonic() - began < float(os.environ.get("SLOW", "0"))
        code = 503 if slow or os.path.exists(f"unready-{port}") else 200
        body = str(os.getpid()).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def _config(tmp_path: Path, port: int, probes: str, replicas: int = 1, extra: str = "", env: str = "") -> str:
    (tmp_path / "serve.py").write_text(SERVER)
    return f'''
    [workers.web]
    command = "{sys.executable} serve.py {{{{ {port} + replica }}}}"
    replicas = {replicas}
    min_uptime = "0.2s"
    backoff = {{ initial = "0.1s", max = "0.5s" }}
    stop_timeout = "2s"
    env = {{ {env} }}
    probes = {{ {probes} }}
    {extra}
    '''


def _row(master, name: str = "web") -> dict:
    return master.status()[name]


def test_startup_probe_holds_readiness_until_the_server_answers(start_master, tmp_path: Path) -> None:
    port = free_port()
    master = start_master(_config(tmp_path, port, f'startup = {{ http = "http://127.0.0.1:{{{{ {port} + replica }}}}/", '
                                  'period = "0.1s", failures = 100 }', env='SLOW = "1.5"'))
    row = wait_for(lambda: (r := _row(master))["state"] == "running" and r, 10, message="running")
    began = time.monotonic()
    assert not row["ready"], "ready before its startup probe passed"
    row = wait_for(lambda: (r := _row(master))["ready"] and r, 10, message="ready")
    assert time.monotonic() - began > 0.5  # the 503s were seen, not skipped
    startup = row["probes"]["startup"]
    assert startup["passing"] and startup["last_failure"] == "HTTP 503 from /" and row["restarts"] == 0


def test_readiness_flips_both_ways(start_master, tmp_path: Path) -> None:
    port = free_port()
    master = start_master(_config(tmp_path, port, f'readiness = {{ http = "http://127.0.0.1:{port}/", '
                                  'period = "0.1s", failures = 2 }'))
    wait_for(lambda: _row(master)["ready"], 10, message="ready")
    (tmp_path / f"unready-{port}").touch()
    row = wait_for(lambda: (r := _row(master))["ready"] is False and r, 5, message="not ready")
    assert row["probes"]["readiness"]["last_failure"] == "HTTP 503 from /" and row["state"] == "running"
    text = orch("status", "-c", str(master.config)).stdout
    assert "PROBES" in text and "not ready, readiness: HTTP 503 from /" in text, text
    (tmp_path / f"unready-{port}").unlink()
    wait_for(lambda: _row(master)["ready"], 5, message="ready again")
    assert _row(master)["restarts"] == 0


def test_a_deadlocked_server_is_restarted_by_liveness(start_master, tmp_path: Path) -> None:
    port = free_port()
    master = start_master(_config(tmp_path, port, f'liveness = {{ http = "http://127.0.0.1:{port}/", '
                                  'period = "0.2s", timeout = "0.3s", failures = 2 }, '
                                  f'startup = {{ tcp = "127.0.0.1:{port}", period = "0.05s", failures = 100 }}'))
    first = wait_for(lambda: (r := _row(master))["probes"] and r["probes"]["liveness"]["checks"] > 1 and r["pid"],
                     10, message="live")
    (tmp_path / f"hang-{port}").write_text(str(first))  # this process deadlocks, the next one does not
    hung = time.monotonic()
    wait_for(lambda: _row(master)["probes"]["liveness"]["failures"] >= 1, 5, message="a probe timing out")
    began = time.monotonic()
    master.call("ping")  # a probe waiting on a server that never answers holds nothing up
    assert time.monotonic() - began < 0.1
    row = wait_for(lambda: (r := _row(master))["pid"] not in (None, first) and r, 10, message="a new process")
    # two timeouts (0.3s each, one period apart) plus one period, and the stop: well under 3s
    assert time.monotonic() - hung < 3.0
    assert row["reason"] == "liveness: timed out after 0.3s" and row["limit_kills"] == {"liveness": 1}
    text = orch("status", "-c", str(master.config)).stdout
    assert "liveness: timed out after 0.3s" in text
    wait_for(lambda: _row(master)["ready"], 5, message="the new process ready")
    assert _row(master)["restarts"] == 1


@pytest.mark.slow  # a master, a restart and a CLI run
def test_a_server_answering_500s_is_restarted_by_liveness_with_its_words(start_master, tmp_path: Path) -> None:
    port = free_port()
    master = start_master(_config(tmp_path, port, f'liveness = {{ http = "http://127.0.0.1:{port}/", '
                                  'period = "0.2s", failures = 3 }, '
                                  f'startup = {{ tcp = "127.0.0.1:{port}", period = "0.05s", failures = 100 }}'))
    first = wait_for(lambda: (r := _row(master))["probes"] and r["probes"]["liveness"]["checks"] > 1 and r["pid"],
                     10, message="live")
    (tmp_path / f"unready-{port}").touch()  # every answer is a 503 from now on
    began = time.monotonic()
    row = wait_for(lambda: (r := _row(master))["pid"] not in (None, first) and r, 10, message="a new process")
    (tmp_path / f"unready-{port}").unlink()
    # three failures 0.2s apart, plus one period, and the stop: well under 2s
    assert time.monotonic() - began < 2.0
    assert row["reason"] == "liveness: HTTP 503 from /" and row["limit_kills"] == {"liveness": 1}, row
    assert "liveness: HTTP 503 from /" in orch("status", "-c", str(master.config)).stdout


def _listening(ports: range) -> int:
    """How many of `ports` have a listening socket on 127.0.0.1, from one read of the kernel's
    table: a snapshot of one moment, which four requests in a row on a loaded machine are not
    (a slow answer read as down, or a replica seen down before and another after its restart)."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    wanted = {f"0100007F:{p:04X}" for p in ports}
    return len({row[1] for row in rows if row[1] in wanted and row[3] == "0A"})


def test_rolling_restart_waits_for_readiness(start_master, tmp_path: Path) -> None:
    """4 replicas that bind their port 1s after they start and never speak sd_notify: with
    min_uptime 0.2s alone a rolling restart would have two or more down at once."""
    port = free_port()
    while not all(_free(port + i) for i in range(4)):
        port = free_port()
    master = start_master(_config(tmp_path, port, f'readiness = {{ tcp = "127.0.0.1:{{{{ {port} + replica }}}}", '
                                  'period = "0.05s", failures = 1 }', replicas=4,
                                  extra="rolling = true\nmax_unavailable = 1", env='BIND_DELAY = "1"'))
    wait_for(lambda: all(r["ready"] for r in master.status().values()) and len(master.status()) == 4, 15,
             message="4 ready")
    old = {n: r["pid"] for n, r in master.status().items()}
    fewest, stop = [4], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            fewest[0] = min(fewest[0], _listening(range(port, port + 4)))
            time.sleep(0.01)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        result = orch("restart", "--rolling", "template:web", "-c", str(master.config), timeout=60)
        assert result.returncode == 0, result.stderr
        rows = master.status()
        assert all(rows[n]["pid"] != old[n] and rows[n]["ready"] for n in old)
    finally:
        stop.set()
        poller.join(5)
    assert fewest[0] >= 3, f"only {fewest[0]} of 4 replicas listened at one moment"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
