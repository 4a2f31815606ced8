"""The master never goes down, freezes or wedges because of what it is given (issue 22):
durations past what the selector takes, spawn batches past the spawner's channel, values
exec cannot take. Each case ran against a real master; the template budget cases are in
tests/test_render_budget.py."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import alive, orch, wait_for

from orchestrator.loop import MAX_WAIT, EventLoop


def _sleeper(extra: str = "") -> str:
    return f"""
        [workers.w]
        command = "sleep 300"
        stop_timeout = "2s"
        {extra}
    """


def test_a_thirty_day_lifetime_does_not_end_the_master(start_master):
    # epoll refuses waits over 24.8 days: this config killed the master 0.1 s after start
    master = start_master(_sleeper('max_lifetime = "30d"'))
    pid = master.wait_running(1)["w"]
    master.call("status")
    time.sleep(0.3)  # the crash came from the first wait of the loop; give it several turns
    assert master.proc.poll() is None, master.stderr()
    assert master.pids()["w"] == pid


@pytest.mark.parametrize("key, value, message", [
    ("timeout", '"' + "9" * 400 + 's"', "at most 10 years"),
    ("timeout", "1e400", "at most"),
    ("max_lifetime", '"400d"', "at most 365d"),
    ("backoff", '{ initial = "2d" }', "at most 1d"),
    ("min_uptime", "nan", "cannot be negative"),
])
def test_a_duration_past_its_bound_is_a_located_error(tmp_path, key, value, message):
    config = tmp_path / "workers.toml"
    config.write_text(_sleeper(f"{key} = {value}"))
    result = orch("check", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    first = result.stderr.splitlines()[0]
    assert f"{config}:5:" in first and message in first, result.stderr
    assert "Traceback" not in result.stderr
    assert len(first) < 300, "the error echoes a huge value in full"


def test_settings_durations_are_bounded_too(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[orchestrator]\ncheck_interval = "1us"\nsettle = "2h"\n' + _sleeper())
    result = orch("check", "-c", str(config))
    assert result.returncode == 2
    assert "check_interval" in result.stderr and "settle: must be at most 1h" in result.stderr


def test_the_loop_never_waits_past_what_epoll_takes():
    now = [0.0]
    loop = EventLoop(clock=lambda: now[0])
    try:
        fired = []
        loop.call_later(40 * 86400.0, lambda: fired.append(1))
        loop.call_later(float("inf"), lambda: fired.append(2))
        loop.call_later(float("nan"), lambda: fired.append(3))
        assert loop._next_timeout() == 0  # NaN is "now", not a crash
        loop.run_once(0)
        assert fired == [3]
        assert loop._next_timeout() == MAX_WAIT
        loop.run_once(0.001)  # a real select with the clamped timeout when due: no OverflowError
        now[0] = 40 * 86400.0
        loop.run_once(0)
        assert fired == [3, 1]
    finally:
        loop.close()


def test_a_stop_with_a_long_timeout_still_works(start_master):
    master = start_master(_sleeper().replace('"2s"', '"1d"'))
    pid = master.wait_running(1)["w"]
    assert master.call("stop", patterns=["w"])
    wait_for(lambda: not alive(pid), 10, message="the stopped sleep to exit")
    assert master.proc.poll() is None
    master.proc.send_signal(signal.SIGTERM)
    assert master.proc.wait(15) == 0
