"""Notify probes (issue 27): READY=1 and WATCHDOG=1 on the notify socket expressed as probes.
The verdict as a table, the config's refusals, and real masters: READY=1 alone makes ready
(min_uptime does not), and a process that stops saying WATCHDOG=1 is replaced."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import orch, wait_for
from orchestrator.config.probes import parse_probes, resolve
from orchestrator.supervise.probes import first_delay, notify_verdict

# (message, period, now, READY=1 at, WATCHDOG=1 at) -> (passed, detail)
VERDICTS = [
    ("ready", 1.0, 5.0, None, None, False, "no READY=1 yet"),
    ("ready", 1.0, 5.0, 0.5, None, True, "ok"),
    ("watchdog", 2.0, 5.0, 4.0, None, False, "no WATCHDOG=1 for 2s"),  # READY=1 is no keep-alive
    ("watchdog", 2.0, 5.0, None, 3.5, True, "ok"),
    ("watchdog", 2.0, 5.0, None, 2.9, False, "no WATCHDOG=1 for 2s"),
]


@pytest.mark.parametrize("message,period,now,ready_at,watchdog_at,ok,detail", VERDICTS)
def test_notify_verdicts(message: str, period: float, now: float, ready_at: float | None,
                         watchdog_at: float | None, ok: bool, detail: str) -> None:
    assert notify_verdict(message, period, now, ready_at, watchdog_at) == (ok, detail)


def test_notify_syntax_and_what_status_shows() -> None:
    decls = parse_probes({"readiness": {"notify": True},
                          "liveness": {"notify": "watchdog", "period": "10s", "failures": 1}})
    ready, watchdog = (resolve(d, d.target) for d in decls)
    assert (ready.message, ready.shown, first_delay(ready)) == ("ready", "READY=1", 0.0)
    assert (watchdog.message, watchdog.shown, first_delay(watchdog)) == ("watchdog", "WATCHDOG=1 every 10s", 10.0)


@pytest.mark.parametrize("table,message", [
    ({"liveness": {"notify": True}}, "READY=1 comes once"),
    ({"readiness": {"notify": "yes"}}, "expected true, \"ready\""),
    ({"readiness": {"notify": False}}, "expected true, \"ready\""),
    ({"readiness": {"notify": True, "timeout": "1s"}}, "a notify probe has no timeout"),
    ({"readiness": {"notify": True, "tcp": "127.0.0.1:1"}}, "exactly one of"),
])
def test_bad_notify_probes_are_refused(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_probes(table)


def test_bad_notify_probe_is_a_located_error(tmp_path: Path) -> None:
    config = tmp_path / "workers.toml"
    config.write_text('[workers.w]\ncommand = "sleep 1"\nprobes = { liveness = { notify = true } }\n')
    result = orch("check", "-c", str(config))
    assert result.returncode == 2 and f"{config}:3: workers.w.probes" in result.stderr, result.stderr
    assert "READY=1 comes once" in result.stderr and "Traceback" not in result.stderr


# --- real masters -----------------------------------------------------------------------

SPEAKER = '''
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
say = lambda words: s.sendto(words, os.environ["NOTIFY_SOCKET"])
while not os.path.exists("go"):  # READY=1 once the file "go" exists
    time.sleep(0.02)
say(b"READY=1")
while not os.path.exists(f"quiet-{os.getpid()}"):  # then WATCHDOG=1 every 0.05s until told
    say(b"WATCHDOG=1")
    time.sleep(0.05)
time.sleep(3600)
'''


def _config(tmp_path: Path, probes: str) -> str:
    (tmp_path / "speak.py").write_text(SPEAKER)
    return f'''
    [workers.w]
    command = "{sys.executable} speak.py"
    min_uptime = "0.1s"
    backoff = {{ initial = "0.1s", max = "0.5s" }}
    stop_timeout = "2s"
    probes = {{ {probes} }}
    '''


def test_notify_readiness_waits_for_ready_1_not_min_uptime(start_master, tmp_path: Path) -> None:
    master = start_master(_config(tmp_path, 'readiness = { notify = true, period = "5s" }'))
    row = wait_for(lambda: (r := master.status()["w"])["state"] == "running" and r, 10, message="running")
    time.sleep(0.4)  # four times min_uptime: without the probe it would be ready by now
    row = master.status()["w"]
    assert not row["ready"] and row["probes"]["readiness"]["last"] == "no READY=1 yet", row
    began = time.monotonic()
    (tmp_path / "go").touch()
    row = wait_for(lambda: (r := master.status()["w"])["ready"] and r, 5, message="ready")
    assert time.monotonic() - began < 2.0, "READY=1 waited for the next period instead of counting at once"
    assert row["probes"]["readiness"]["passing"] and row["probes"]["readiness"]["target"] == "READY=1"


def test_a_process_that_stops_saying_watchdog_is_restarted(start_master, tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    # the startup probe holds liveness back until READY=1: an interpreter's start-up is no hang
    master = start_master(_config(tmp_path, 'startup = { notify = true, period = "0.1s", failures = 100 }, '
                                  'liveness = { notify = "watchdog", period = "0.3s", failures = 2 }'))
    first = wait_for(lambda: (r := master.status()["w"])["ready"] and r["probes"]["liveness"]["checks"] >= 2
                     and r["pid"], 10, message="ready and live")
    assert master.status()["w"]["probes"]["liveness"]["last_failure"] is None  # its keep-alives counted
    (tmp_path / f"quiet-{first}").touch()
    quiet = time.monotonic()
    row = wait_for(lambda: (r := master.status()["w"])["pid"] not in (None, first) and r, 10, message="a new process")
    # period x failures plus one period, and the stop: well under 2s
    assert time.monotonic() - quiet < 2.0
    assert row["reason"] == "liveness: no WATCHDOG=1 for 0.3s" and row["limit_kills"] == {"liveness": 1}, row
    wait_for(lambda: master.status()["w"]["ready"], 5, message="the new process ready")
