"""A save is read and expanded while its burst window runs (Reloader.prepare), and applied
as read when the window ends on the same bytes, so a save alone costs the window and the
apply, not the window and the whole reload (issue 31: within the window plus 50 ms).

Real masters and real saves; the watcher's own timers on a real EventLoop and real inotify.
What read-ahead must never do is apply anything but the file as it is when the window ends."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from conftest import wait_for
from orchestrator.control.watch import AHEAD, BURST, ConfigWatcher
from orchestrator.loop import EventLoop

pytestmark = pytest.mark.slow  # real masters, and windows of a quarter second

CONFIG = """\
[workers.keep]
command = "sleep 1001"
stop_timeout = "2s"

[workers.edit]
command = "sleep 2000"
stop_timeout = "2s"
"""


def running(master, name: str) -> list[str]:
    pid = master.pids().get(name)
    try:
        return psutil.Process(pid).cmdline() if pid else []
    except psutil.NoSuchProcess:
        return []


def reload_lines(master) -> list[str]:
    return [line for line in master.stderr().splitlines() if " reload (" in line]


def test_a_save_is_applied_as_read_ahead(start_master):
    master = start_master(CONFIG)
    before = master.wait_running(2)
    master.write(CONFIG.replace("sleep 2000", "sleep 2001"))
    wait_for(lambda: running(master, "edit") == ["sleep", "2001"], 10, message="edit to run sleep 2001")
    wait_for(lambda: reload_lines(master), 5, message="the reload's log line")
    lines = reload_lines(master)
    assert len(lines) == 1 and "read ahead): +0 -0 ~1" in lines[0], lines
    assert master.pids()["keep"] == before["keep"]


def test_a_second_save_in_the_window_is_the_one_applied(start_master):
    master = start_master(CONFIG)
    master.wait_running(2)
    master.write(CONFIG.replace("sleep 2000", "sleep 2001"))
    time.sleep(AHEAD + 0.1)  # the first save has been read ahead by now
    master.write(CONFIG.replace("sleep 2000", "sleep 2002"))
    wait_for(lambda: running(master, "edit") == ["sleep", "2002"], 10, message="edit to run sleep 2002")
    time.sleep(BURST + 0.5)
    assert running(master, "edit") == ["sleep", "2002"]
    assert len(reload_lines(master)) == 1, reload_lines(master)


def test_bytes_changed_without_an_event_are_read_again(start_master, tmp_path):
    """A write through a hard link in a folder nobody watches changes the config's bytes
    without an event: the window then ends on other bytes than were read ahead, and the
    reload must read the file again rather than apply what it read ahead."""
    config = '[orchestrator]\nlog_level = "debug"\n\n' + CONFIG
    master = start_master(config)
    master.wait_running(2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    master.write(config.replace("sleep 2000", "sleep 2001"))
    alias = elsewhere / "alias.toml"
    os.link(master.config, alias)  # the inode the rename just put in place
    # Read ahead ("sleep 2001"); the window ends BURST - AHEAD (0.2 s) later.
    wait_for(lambda: "config save read ahead" in master.stderr(), 5, interval=0.01,
             message="the save to be read ahead")
    with open(alias, "r+") as f:  # same inode, same length, no event in the watched folder
        text = f.read()
        f.seek(0)
        f.write(text.replace("sleep 2001", "sleep 2003"))
    wait_for(lambda: running(master, "edit") == ["sleep", "2003"], 10,
             message="edit to run what the file holds when the window ends (sleep 2003)")
    lines = reload_lines(master)
    assert len(lines) == 1 and "read ahead" not in lines[0], lines


def test_the_watcher_calls_ahead_once_a_finished_save_is_quiet_and_not_for_a_writer(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text("a = 1\n")
    loop = EventLoop()
    calls: list[tuple[float, str]] = []
    began = time.monotonic()

    def note(what: str):
        return lambda *args: calls.append((time.monotonic() - began, what))
    watcher = ConfigWatcher(loop, [config], note("change"), settle=0.6, on_quiet=note("quiet"),
                            on_event=note("event"))
    watcher.start()
    try:
        def run_until(predicate, timeout: float = 5.0) -> None:
            deadline = time.monotonic() + timeout
            while not predicate() and time.monotonic() < deadline:
                loop.run_once(0.02)
            assert predicate(), calls
        tmp = tmp_path / ".workers.toml.tmp"
        tmp.write_text("a = 2\n")
        os.replace(tmp, config)  # a finished save
        run_until(lambda: any(w == "change" for _, w in calls))
        kinds = [w for _, w in calls]
        assert kinds.count("quiet") == 1 and kinds.index("quiet") < kinds.index("change"), calls
        assert kinds[0] == "event"
        calls.clear()
        with open(config, "a") as f:  # a writer that has not closed: modified, no finished save
            f.write("b = 3\n")
            f.flush()
            run_until(lambda: any(w == "event" for _, w in calls))
            for _ in range(10):  # longer than AHEAD: nothing is read ahead of an unfinished write
                loop.run_once(0.02)
            assert "quiet" not in [w for _, w in calls], calls
    finally:
        watcher.stop()
        loop.close()
