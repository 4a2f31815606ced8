"""The config watcher's folder events from watchdog's observer (control/observer.py), on
real folders and files, delivered through the loop's one thread-safe entry."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from conftest import wait_for

from orchestrator.control.observer import OVERFLOW, FolderWatch
from orchestrator.loop import EventLoop


class Recorder:
    """A real loop and a FolderWatch on it; `drain()` runs the loop until events stop coming."""

    def __init__(self) -> None:
        self.loop = EventLoop()
        self.events: list[tuple[str, str, str | None]] = []
        self.threads: set[str] = set()
        self.watch = FolderWatch(self.loop, self._event)
        self.watch.start()

    def _event(self, *event) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append(event)

    def drain(self, quiet: float = 0.3, timeout: float = 5.0) -> list[tuple[str, str, str | None]]:
        deadline, last = time.monotonic() + timeout, (len(self.events), time.monotonic())
        while time.monotonic() < deadline:
            self.loop.run_once(0.05)
            if len(self.events) != last[0]:
                last = (len(self.events), time.monotonic())
            elif self.events and time.monotonic() - last[1] > quiet:
                break
        events, self.events = self.events, []
        return events

    def close(self) -> None:
        self.watch.stop()
        self.loop.close()


def test_events_are_handled_on_the_loop_thread(tmp_path):
    rec = Recorder()
    try:
        rec.watch.add(str(tmp_path))
        (tmp_path / "f").write_text("x")
        assert ("closed", str(tmp_path / "f"), None) in rec.drain()
        assert rec.threads == {threading.main_thread().name}
    finally:
        rec.close()


def test_a_rename_inside_a_watched_folder_is_one_moved_event(tmp_path):
    rec = Recorder()
    try:
        rec.watch.add(str(tmp_path))
        (tmp_path / ".tmp").write_text("x")
        rec.drain()
        os.rename(tmp_path / ".tmp", tmp_path / "workers.toml")
        assert rec.drain() == [("moved", str(tmp_path / ".tmp"), str(tmp_path / "workers.toml"))]
    finally:
        rec.close()


def test_a_rename_in_from_elsewhere_is_moved_with_no_source(tmp_path):
    watched, other = tmp_path / "w", tmp_path / "o"
    watched.mkdir(), other.mkdir()
    (other / "new").write_text("x")
    rec = Recorder()
    try:
        rec.watch.add(str(watched))
        os.rename(other / "new", watched / "workers.toml")
        assert rec.drain() == [("moved", "", str(watched / "workers.toml"))]
        os.rename(watched / "workers.toml", other / "back")  # and out again: gone from here
        assert rec.drain() == [("deleted", str(watched / "workers.toml"), None)]
    finally:
        rec.close()


def test_write_close_create_delete(tmp_path):
    rec = Recorder()
    try:
        rec.watch.add(str(tmp_path))
        path = tmp_path / "workers.toml"
        with open(path, "w") as f:
            f.write("a")
            f.flush()
        events = rec.drain()
        assert events[0] == ("created", str(path), None)
        assert ("modified", str(path), None) in events
        assert events[-1] == ("closed", str(path), None)
        path.unlink()
        (tmp_path / "sub").mkdir()  # folders are not reported
        assert rec.drain() == [("deleted", str(path), None)]
    finally:
        rec.close()


def test_two_names_of_one_folder_both_hear_and_removing_one_keeps_the_other(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    rec = Recorder()
    try:
        rec.watch.add(str(real))
        rec.watch.add(str(tmp_path / "link"))  # the same inode, two names
        (real / "f").write_text("x")
        closed = {src for kind, src, _ in rec.drain() if kind == "closed"}
        assert closed == {str(real / "f"), str(tmp_path / "link" / "f")}
        rec.watch.remove(str(tmp_path / "link"))
        (real / "g").write_text("x")
        assert {src for kind, src, _ in rec.drain() if kind == "closed"} == {str(real / "g")}
    finally:
        rec.close()


def test_a_deleted_folder_is_forgotten_and_can_be_watched_anew(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    rec = Recorder()
    try:
        rec.watch.add(str(folder))
        folder.rmdir()
        wait_for(lambda: rec.drain(timeout=0.2) is not None and str(folder) not in rec.watch.folders, 5,
                 message="the removed folder's watch to be dropped")
        folder.mkdir()
        rec.watch.add(str(folder))  # a new inode, watched again
        (folder / "f").write_text("x")
        assert ("closed", str(folder / "f"), None) in rec.drain()
    finally:
        rec.close()


def test_an_overflowed_queue_is_reported(tmp_path):
    # The observer's threads read as fast as they can: stop the whole process (as a busy
    # machine would) with the kernel still queueing, then let it read the overflow.
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_observer import Recorder
rec = Recorder()
rec.watch.add({str(tmp_path)!r})
print("ready", flush=True)
sys.stdin.readline()
kinds = [kind for kind, _, _ in rec.drain(quiet=1.0, timeout=20)]
print("kinds", " ".join(sorted(set(kinds))), flush=True)
rec.close()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGSTOP)
        for i in range(limit // 2 + 10):  # two events each (create, close): past the queue's limit
            (tmp_path / f"f{i}").touch()
        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        assert OVERFLOW in line.split(), line
    finally:
        child.kill()
        child.wait()


def test_the_master_hands_work_to_its_loop_thread_only(start_master):
    master = start_master("""
        [workers.w]
        command = ["sleep", "60"]
        """)
    master.wait_running(1)
    tasks = os.listdir(f"/proc/{master.pid}/task")
    names = {Path(f"/proc/{master.pid}/task/{t}/comm").read_text().strip() for t in tasks}
    assert 1 < len(tasks) <= 5, names  # the loop, and watchdog's reader, emitter and dispatcher
    master.write('[workers.w]\ncommand = ["sleep", "61"]\n')
    wait_for(lambda: master.call("status")["reloads"] == 1, 10, message="the save to be applied")
