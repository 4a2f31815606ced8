"""Events (issue 29): the master's journal, `orch events` (history, --json, -f over the
control socket, a slow reader that gets "dropped N"), with real masters and processes."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import orch, wait_for

from orchestrator.config.hooks import EVENT_KINDS
from orchestrator.supervise.journal import Journal, exit_facts


# --- the journal itself (pure) ---------------------------------------------------------
def test_the_journal_keeps_the_last_records_and_hands_new_ones_to_followers():
    journal = Journal(capacity=3)
    seen: list[dict] = []
    stop = journal.follow(seen.append)
    for pid in range(5):
        journal.record("started", "web-1", "web", pid=pid)
    assert [r["pid"] for r in journal.recent()] == [2, 3, 4]
    assert [r["seq"] for r in journal.recent(2)] == [4, 5]
    assert [r["seq"] for r in journal.recent(since_seq=3)] == [4, 5]
    assert journal.recent(0) == []
    assert len(seen) == 5 and list(seen[0])[:5] == ["ts", "seq", "kind", "instance", "template"]
    stop()
    journal.record("reload", ts=0, seq=0)
    assert len(seen) == 5, "unsubscribed"
    assert journal.recent(1)[0]["seq"] == 6 and journal.recent(1)[0]["ts"] > 0, "facts never hide ts or seq"


def test_a_failing_follower_is_dropped_and_the_others_still_hear():
    journal = Journal()
    heard: list[int] = []

    def broken(rec: dict) -> None:
        raise RuntimeError("a bug in a follower")
    journal.follow(broken)
    journal.follow(lambda rec: heard.append(rec["seq"]))
    journal.record("started")
    journal.record("started")
    assert heard == [1, 2]


@pytest.mark.parametrize("text,code,signame", [
    ("exit 3", 3, None), ("exit 0", 0, None), ("SIGKILL", None, "SIGKILL"), ("signal 40", None, "signal 40"),
    ("exit 1, max_requests", 1, None), ("exec failed: no such file", None, None), (None, None, None),
])
def test_exit_facts(text, code, signame):
    assert exit_facts(text) == {"exit": text, "code": code, "signal": signame}


# --- a real master -----------------------------------------------------------------------
CONFIG = """
[workers.sleeper]
command = ["sleep", "1000"]
min_uptime = "0.2s"

[workers.once]
command = ["sh", "-c", "exit 3"]
restart = "never"
"""


def _events(master, *args: str) -> list[dict]:
    result = orch("events", "--json", *args, "-c", str(master.config), timeout=20)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_history_without_follow(start_master):
    master = start_master(CONFIG)
    wait_for(lambda: master.status()["once"]["state"] == "exited", 10, message="once to exit")
    pid = master.status()["sleeper"]["pid"]
    events = _events(master)
    started = [e for e in events if e["kind"] == "started" and e["instance"] == "sleeper"]
    assert started and started[0]["pid"] == pid and started[0]["template"] == "sleeper"
    exited = [e for e in events if e["kind"] == "exited" and e["instance"] == "once"]
    assert len(exited) == 1 and exited[0]["code"] == 3 and exited[0]["exit"] == "exit 3"
    assert exited[0]["new"] == "exited" and exited[0]["signal"] is None
    assert all(e["kind"] in EVENT_KINDS for e in events)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    # patterns keep one instance's events; -n the last N
    assert {e["instance"] for e in _events(master, "template:once")} == {"once"}
    assert len(_events(master, "-n", "1")) == 1
    human = orch("events", "once", "-c", str(master.config), timeout=20)
    assert human.returncode == 0
    line = [ln for ln in human.stdout.splitlines() if " exited " in ln][0]
    assert line[:4].isdigit() and ":" in line[:23] and "code=3" in line, line  # a timestamp first
    missing = orch("events", "nobody", "-c", str(master.config), timeout=20)
    assert missing.returncode == 1 and "nobody" in missing.stderr


def test_a_reload_refused_is_an_event_with_its_located_error(start_master):
    master = start_master(CONFIG)
    master.write(CONFIG + "\n[workers.bad]\ncommand = 3\n")
    with pytest.raises(RuntimeError):
        master.call("reload")
    failed = [e for e in _events(master) if e["kind"] == "reload_failed"]
    assert failed and "workers.toml:" in failed[-1]["error"] and "workers.bad.command" in failed[-1]["error"]


def _read_json_lines(proc: subprocess.Popen, until, timeout: float) -> list[dict]:
    """Lines of `proc`'s stdout as JSON until `until(record)` is true; fails after `timeout`."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    buffer = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout}s; got {got[-5:]}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"orch events ended: {proc.wait()} {got[-5:]}")
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            rec = json.loads(line)
            rec["_seen"] = time.monotonic()
            got.append(rec)
            if until(rec):
                return got


def test_follow_sees_a_restart_as_it_happens(start_master):
    """The stream is pushed, not polled: the exit reaches the follower well within the half
    second a poll would cost. The issue's 100 ms is a speed, measured by bench.events on a
    quiet machine (bench/RESULTS.md: 1-4 ms), never asserted here: a loaded CI machine took
    over 100 ms."""
    master = start_master(CONFIG)
    pid = wait_for(lambda: master.status()["sleeper"]["pid"], 10, message="sleeper to run")
    follower = subprocess.Popen([sys.executable, "-m", "orchestrator", "events", "-f", "--json", "sleeper",
                                 "-c", str(master.config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_json_lines(follower, lambda r: r["kind"] == "started" and r["pid"] == pid, 20)  # history: it is on
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        got = _read_json_lines(follower, lambda r: r["kind"] == "started" and r["pid"] != pid, 10)
        exited = next(r for r in got if r["kind"] == "exited")
        assert exited["pid"] == pid and exited["signal"] == "SIGKILL" and exited["new"] == "starting"
        took = exited["_seen"] - killed
        print(f"kill -> exited event on `orch events -f`: {took * 1000:.1f} ms; "
              f"-> started: {(got[-1]['_seen'] - killed) * 1000:.1f} ms")
        assert took < 0.5, f"the restart reached the follower {took * 1000:.0f} ms after the kill"
        follower.send_signal(signal.SIGINT)  # Ctrl-C: exit 0, quietly
        assert follower.wait(10) == 0
        assert follower.stderr.read() == b""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


@pytest.mark.slow
def test_a_slow_follower_gets_dropped_n_and_never_slows_the_master(start_master):
    master = start_master(CONFIG)
    wait_for(lambda: master.status()["once"]["state"] == "exited", 10, message="the fleet to settle")
    slow = socket.socket(socket.AF_UNIX)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(str(master.socket))
    slow.sendall(json.dumps({"cmd": "events", "args": {"follow": True, "lines": 0}}).encode() + b"\n")
    # Refused reloads make big events (each carries its located errors: 27 KB here) while
    # the follower reads nothing; the master answers every request at once all along.
    unknown = "".join(f"unknown_{i}_{'x' * 400} = 1\n" for i in range(60))
    master.write(CONFIG + "\n[workers.bad]\ncommand = \"x\"\n" + unknown)
    worst = 0.0
    try:
        for _ in range(10):
            with pytest.raises(RuntimeError):
                master.call("reload")
            before = time.monotonic()
            master.call("ping")
            worst = max(worst, time.monotonic() - before)
        print(f"slowest ping while a follower was stuck: {worst * 1000:.1f} ms")
        assert worst < 0.5
        reader = slow.makefile("rb")
        assert json.loads(reader.readline())["ok"]
        slow.settimeout(10)
        kept = 0
        while "dropped" not in (message := json.loads(reader.readline())):
            kept += message["event"]["kind"] == "reload_failed"  # not the fleet's own start
        assert message["dropped"] >= 1 and kept + message["dropped"] >= 10, (kept, message)  # the watcher reloads too
        with pytest.raises(RuntimeError):
            master.call("reload")
        assert json.loads(reader.readline())["event"]["kind"] == "reload_failed", "events flow again"
    finally:
        slow.close()


def test_the_cli_says_how_many_events_a_slow_reader_missed():
    code = ("from orchestrator.cli.events_view import _print_dropped\n"
            "_print_dropped(7, False)\n_print_dropped(7, True)")
    human, as_json = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.splitlines()
    assert human.endswith("dropped 7 events (this reader was too slow)")
    assert json.loads(as_json)["kind"] == "dropped" and json.loads(as_json)["count"] == 7


KINDS_CONFIG = """
[workers.aged]
command = ["sleep", "1000"]
max_lifetime = "1s"
stop_timeout = "1s"

[workers.sick]
command = ["sleep", "1000"]
probes = { liveness = { exec = ["false"], period = "0.2s", failures = 100 } }

[workers.calm]
command = ["sleep", "1000"]
"""


def _kept(master, *patterns: str) -> list[dict]:
    """The master's kept events, asked on the control socket (no CLI start-up per poll)."""
    return master.call("events", patterns=list(patterns) or None)["events"]


def test_limits_probe_failures_and_stops_are_events(start_master):
    master = start_master(KINDS_CONFIG)
    wait_for(lambda: any(e["kind"] == "limit" for e in _kept(master, "aged")), 10, message="a limit event")
    limit = next(e for e in _kept(master, "aged") if e["kind"] == "limit")
    assert limit["limit"] == "max_lifetime" and limit["value"] and limit["action"] == "graceful restart"
    failed = wait_for(lambda: [e for e in _kept(master, "sick") if e["kind"] == "probe_failed"], 10)
    assert failed[0]["probe"] == "liveness" and failed[0]["check"] == "exec" and "false" in failed[0]["error"]
    wait_for(lambda: master.status()["calm"]["state"] == "running", 10, message="calm to run")
    master.call("stop", patterns=["calm"], wait=True)
    stopped = [e for e in _kept(master, "calm") if e["kind"] == "stopped"]
    assert stopped and stopped[0]["signal"] == "SIGTERM" and stopped[0]["pid"], stopped


@pytest.mark.slow
def test_a_new_spawner_is_an_event(start_master):
    master = start_master(CONFIG)
    wait_for(lambda: master.status()["sleeper"]["state"] == "running", 10, message="sleeper to run")
    spawner = next(p for p in master.descendants() if "spawner" in " ".join(p.cmdline()))
    os.kill(spawner.pid, signal.SIGKILL)

    def replaced() -> list[dict]:
        try:  # the master may be busy ending the old fleet for a while (spawn/orphans.py)
            return [e for e in _kept(master) if e["kind"] == "spawner_replaced"]
        except TimeoutError:
            return []
    found = wait_for(replaced, 40, message="a spawner_replaced event")
    assert found[0]["old_pid"] == spawner.pid and found[0]["pid"] != spawner.pid
