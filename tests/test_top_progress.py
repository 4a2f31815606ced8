"""Progress on one updating line for commands that wait: on a terminal only, nothing extra
when piped, and gone from the screen before the command's own result."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import orch, text_of, wait_for
from orchestrator.cli.progress import Progress, count, follow, progress_line

PY = sys.executable
# Takes 0.5 s x n to stop after SIGTERM, so a stop of the fleet is under way long enough to see.
SLOW_STOP = json.dumps([PY, "-c", "import signal, sys, time\n"
                        "stopping = []\n"
                        "signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))\n"
                        "print('ready', flush=True)\n"
                        "while not stopping: time.sleep(0.05)\n"
                        "time.sleep(0.5 * int(sys.argv[1]))", "{{ n }}"])
CONFIG = f"""
[orchestrator]
graceful_timeout = "20s"

[workers.slow]
command = {SLOW_STOP}
matrix = {{ n = [1, 2, 3, 4] }}
"""


def ready_fleet(master) -> dict[str, int]:
    """Running, and past installing the slow SIGTERM handler (a TERM before it kills at once)."""
    pids = master.wait_running(4)
    logs = master.log_dir
    wait_for(lambda: all("ready" in text_of(logs / f"{name}.log") for name in pids), 10,
             message="every worker ready")
    return pids


def run_in_pty(args: list[str], cwd: Path, timeout: float = 30) -> tuple[int, str]:
    """Run a command with stdin, stdout and stderr on a pseudo-terminal; its exit code and output."""
    master_fd, slave_fd = pty.openpty()
    proc = subprocess.Popen(args, stdin=slave_fd, stdout=slave_fd, stderr=slave_fd, cwd=cwd,
                            start_new_session=True)
    os.close(slave_fd)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master_fd], [], [], 0.1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master_fd, 65536)
            except OSError:  # EIO: every writer of the terminal has gone
                break
            if not data:
                break
            out += data
        return proc.wait(timeout=max(deadline - time.monotonic(), 1)), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master_fd)


@pytest.mark.parametrize("what, done, total, width, expected", [
    ("stopping", 1, 4, 80, "stopping  1/4 [#####---------------]  2.5s"),
    ("stopping", 4, 4, 80, "stopping  4/4 [####################]  2.5s"),
    ("stopping", 5, 4, 80, "stopping  5/4 [####################]  2.5s"),  # never past the end
    ("waiting", None, None, 80, "waiting  2.5s"),
    ("stopping every instance", 0, 4, 20, "stopping every inst"),  # never the last column
    ("x", 0, 0, 80, "x  2.5s"),
])
def test_progress_line(what, done, total, width, expected):
    assert progress_line(what, done, total, 2.5, width) == expected


def rows(**states: tuple[str, int | None]) -> list[dict]:
    return [{"name": n, "state": s, "pid": p} for n, (s, p) in states.items()]


@pytest.mark.parametrize("goal, now, expected", [
    ("stopped", rows(a=("stopped", None), b=("stopping", 11), c=("exited", None)), (2, 3)),
    ("running", rows(a=("running", 20), b=("starting", None), c=("running", 12)), (2, 3)),
    ("restarted", rows(a=("running", 10), b=("running", 21), c=("starting", None)), (1, 3)),
    ("gone", rows(a=("stopped", None), b=("stopping", 11)), (2, 3)),  # c is no longer listed
])
def test_count(goal, now, expected):
    assert count(now, goal, {"a": 10, "b": 11, "c": 12}) == expected


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_waits_a_moment_then_redraws_in_place_and_is_erased():
    clock = [0.0]
    term = FakeTerminal()
    progress = Progress("stopping", term, delay=0.3, clock=lambda: clock[0])
    progress.show(0, 4)
    assert term.getvalue() == ""  # an operation over at once prints nothing
    clock[0] = 0.5
    progress.show(1, 4)
    clock[0] = 0.55
    progress.show(2, 4)  # throttled: at most ten redraws a second
    clock[0] = 0.7
    progress.show(3, 4)
    progress.clear()
    assert term.getvalue() == ("\rstopping  1/4 [#####---------------]  0.5s\x1b[K"
                               "\rstopping  3/4 [###############-----]  0.7s\x1b[K\r\x1b[K")


def test_nothing_at_all_off_a_terminal():
    stream = io.StringIO()
    progress = Progress("stopping", stream, delay=0)
    progress.show(1, 2)
    progress.clear()
    assert stream.getvalue() == "" and not progress.enabled


def test_down_on_a_terminal_shows_progress_then_only_the_result(start_master, tmp_path):
    master = start_master(CONFIG)
    ready_fleet(master)
    code, out = run_in_pty([PY, "-m", "orchestrator", "down", "-c", str(master.config)], tmp_path)
    assert code == 0, out
    assert "stopping every instance  " in out and "/4 [" in out, out
    assert "\r\x1b[K" + f"master {master.pid} and all its instances are gone" in out, repr(out)
    master.proc.wait(10)


def test_down_without_a_terminal_prints_nothing_extra(start_master):
    master = start_master(CONFIG)
    ready_fleet(master)
    result = orch("down", "-c", str(master.config))
    assert result.returncode == 0
    assert result.stdout == f"master {master.pid} and all its instances are gone\n" and result.stderr == ""


def test_restart_on_a_terminal_shows_progress_then_only_its_result(start_master, tmp_path):
    """restart waits until the new process runs: the progress line counts it, and is erased
    before the result is printed."""
    master = start_master(CONFIG)
    ready_fleet(master)
    code, out = run_in_pty([PY, "-m", "orchestrator", "restart", "-c", str(master.config), "slow-1"], tmp_path)
    assert code == 0, repr(out)
    assert out.replace("\r\x1b[K", "\n").strip().splitlines()[-1] == "restart: slow-1", repr(out)
    if "restarting" in out:  # shown once the wait passes 0.3 s
        assert "restarting  0/1 [" in out or "restarting  1/1 [" in out, repr(out)
    code, out = run_in_pty([PY, "-m", "orchestrator", "restart", "--no-wait", "-c", str(master.config), "slow-1"],
                           tmp_path)
    assert code == 0 and out.strip().endswith("restart: slow-1"), repr(out)


def test_follow_shows_done_over_total_while_a_caller_waits_for_completion(start_master):
    """What `restart` will show once it waits for completion: the helper polls status while
    the caller blocks (here: a loop standing in for a request that replies when done)."""
    master = start_master(CONFIG)
    before = ready_fleet(master)
    term = FakeTerminal()
    with follow(master.socket, "restarting", "restarted", ["slow-*"], stream=term, interval=0.05):
        master.call("restart", patterns=["slow-*"])
        wait_for(lambda: all(master.status()[n]["state"] == "running" and master.status()[n]["pid"] != p
                             for n, p in before.items()), 15, message="every instance restarted")
        time.sleep(0.3)  # at least one more poll sees the end
    shown = term.getvalue()
    assert "restarting  0/4 [" in shown or "restarting  1/4 [" in shown, shown
    assert "restarting  4/4 [####################]" in shown and shown.endswith("\r\x1b[K"), shown


def test_up_detach_on_a_terminal_prints_only_its_result(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text(CONFIG)
    try:
        code, out = run_in_pty([PY, "-m", "orchestrator", "up", "--detach", "-c", str(config)], tmp_path)
        assert code == 0, out
        last = out.replace("\r\x1b[K", "\n").strip().splitlines()[-1]
        assert last.startswith("orch master ") and "is running in the background" in last, repr(out)
    finally:
        assert orch("down", "-c", str(config)).returncode == 0
