"""The master's own log is written once per loop turn (observe/masterlog.py): a line must
still reach stderr while the master sits idle, and the last line before it exits."""

from __future__ import annotations

import io
import logging
import os
import threading
import time

from orchestrator.loop import EventLoop
from orchestrator.observe.masterlog import TurnHandler

from conftest import wait_for

FLEET = """
[workers.sleeper]
command = ["sleep", "60"]
replicas = 40
"""


def test_every_started_line_is_on_stderr_while_the_master_idles(start_master):
    master = start_master(FLEET)
    master.wait_running(40)
    # 40 lines are far below the 64 KiB buffer: only the loop's flush before it waits
    # can have written them
    wait_for(lambda: master.stderr().count("] started") == 40, 5, message="40 'started' lines")


def test_the_exit_line_is_written_before_the_master_exits(start_master):
    master = start_master(FLEET)
    master.wait_running(40)
    assert master.terminate() == 0
    text = master.stderr()
    assert f"master {master.pid} exited" in text
    assert text.count("] stopped") == 40


def test_lines_wait_in_the_buffer_until_flush(tmp_path):
    path = tmp_path / "err"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        handler = TurnHandler(fd)
        logger = logging.Logger("t")
        logger.addHandler(handler)
        for i in range(100):
            logger.warning("line %d", i)
        assert path.read_text() == ""  # one write later, not 100 now
        handler.flush()
        assert path.read_text().splitlines() == [f"line {i}" for i in range(100)]
    finally:
        os.close(fd)


def test_the_loop_runs_before_wait_only_when_it_may_block():
    loop = EventLoop()
    calls: list[str] = []
    loop.before_wait.append(lambda: calls.append("flush"))
    loop.call_soon(lambda: calls.append("soon"))
    loop.call_soon(lambda: loop.call_soon(lambda: calls.append("soon again")))
    loop.call_later(0.05, lambda: calls.append("timer"))
    loop.call_later(0.06, loop.stop)
    thread = threading.Thread(target=loop.run)
    thread.start()
    thread.join(5)
    loop.close()
    assert not thread.is_alive()
    # the soon calls run in zero-timeout turns, with no flush in between; the flush comes
    # before the wait for the timer
    assert calls[:3] == ["soon", "soon again", "flush"]
    assert "timer" in calls


def test_a_closed_stderr_does_not_raise(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)
    handler = TurnHandler(write_end)
    logger = logging.Logger("t")
    logger.addHandler(handler)
    logger.warning("into a closed pipe")
    handler.flush()  # EPIPE: swallowed, there is no one left to tell
    os.close(write_end)
