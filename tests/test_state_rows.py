"""The state file after a crash formats only the rows that changed (issue 31: at 5,000
instances re-encoding every row took up to 120 ms of the loop after each crash, and a
replacement that landed meanwhile waited), and still says exactly what runs."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from fakes import Replay
from orchestrator.procfs import start_time
from orchestrator.spawn.orphans import StateRecorder, read_state, state_path, write_state
from orchestrator.spawn.state_rows import StateRows

FLEET = """
[workers.w]
command = "prog"
replicas = 40
"""


@pytest.fixture
def fleet(tmp_path):
    r = Replay(tmp_path, FLEET)
    spawner = SimpleNamespace(pid=os.getpid(), run="0123456789abcdef")
    recorder = StateRecorder(r.loop, r.supervisor, tmp_path / "orch.pid", lambda: spawner)
    yield r, recorder
    recorder.close(clean=False)
    r.close()


def _written(r: Replay, recorder: StateRecorder) -> dict:
    r.advance(1.0)  # past the recorder's wait after a burst
    assert recorder._timer is None, "the write is still pending"
    record = read_state(state_path(recorder.pidfile))
    assert record is not None, "no trusted state file"
    return record


def _groups(record: dict) -> dict[int, int | None]:
    return {pid: start for pid, start in record["groups"]}


def test_a_crash_formats_one_row_and_the_file_says_exactly_what_runs(fleet):
    r, recorder = fleet
    running = r.ack()
    assert len(running) == 40
    record = _written(r, recorder)
    assert set(_groups(record)) == set(running.values())
    assert record["run"] == "0123456789abcdef" and record["spawner"] == [os.getpid(), start_time(os.getpid())]
    assert recorder.rows.built == 40

    old = running["w-7"]
    r.exit("w-7")  # a first crash restarts at once
    new = r.ack()["w-7"]
    groups = _groups(_written(r, recorder))
    assert old not in groups and new in groups and len(groups) == 40
    assert recorder.rows.built == 41, "a crash re-formatted more than the replacement's row"

    recorder.write()  # nothing changed: nothing formatted, the same content
    assert recorder.rows.built == 41
    assert _groups(read_state(state_path(recorder.pidfile))) == groups


def test_ended_processes_leave_the_file(fleet):
    r, recorder = fleet
    r.ack()
    _written(r, recorder)
    r.supervisor.shutting_down = True  # nothing restarts
    for name in ("w", "w-1", "w-39"):
        r.exit(name, signum=9)
    groups = _groups(_written(r, recorder))
    assert len(groups) == 37 and not {r.pids[n] for n in ("w", "w-1", "w-39")} & set(groups)
    assert recorder.rows.built == 40


def test_a_new_process_under_a_known_pid_gets_its_new_start_time():
    rows = StateRows()
    inst = SimpleNamespace(start_ticks=100)
    rows.sync({4242: inst})
    assert json.loads(f"[{rows.text()}]") == [[4242, 100]]
    inst.start_ticks = 250  # the pid was recycled to a new process of this instance
    rows.sync({4242: inst})
    assert json.loads(f"[{rows.text()}]") == [[4242, 100]], "an untouched row is kept as it was"
    rows.touch(4242)
    rows.sync({4242: inst})
    assert json.loads(f"[{rows.text()}]") == [[4242, 250]]
    rows.sync({})
    assert rows.text() == "" and len(rows) == 0


@pytest.mark.parametrize("spawner", [None, 77])
def test_the_record_is_json_with_or_without_groups(tmp_path, spawner):
    pidfile = tmp_path / "orch.pid"
    write_state(pidfile, spawner, [(1, 2), (3, None)], run="r", stopped=["b", "a"])
    record = read_state(state_path(pidfile))
    assert record is not None and record["stopped"] == ["a", "b"]
    assert record.get("groups") == (None if spawner is None else [[1, 2], [3, None]])

