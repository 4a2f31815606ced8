"""The master's own inotify reader (control/inotify.py), on real folders and files."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.control.inotify import OVERFLOW, FolderWatch

from conftest import wait_for


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []
        self.watch = FolderWatch(lambda *event: self.events.append(event))

    def drain(self) -> list[tuple[str, str, str | None]]:
        self.watch.read()
        events, self.events = self.events, []
        return events


def test_a_rename_inside_a_watched_folder_is_one_moved_event(tmp_path):
    rec = Recorder()
    rec.watch.add(str(tmp_path))
    (tmp_path / ".tmp").write_text("x")
    rec.drain()
    os.rename(tmp_path / ".tmp", tmp_path / "workers.toml")
    assert rec.drain() == [("moved", str(tmp_path / ".tmp"), str(tmp_path / "workers.toml"))]


def test_a_rename_in_from_elsewhere_is_moved_with_no_source(tmp_path):
    watched, other = tmp_path / "w", tmp_path / "o"
    watched.mkdir(), other.mkdir()
    (other / "new").write_text("x")
    rec = Recorder()
    rec.watch.add(str(watched))
    os.rename(other / "new", watched / "workers.toml")
    assert rec.drain() == [("moved", "", str(watched / "workers.toml"))]
    os.rename(watched / "workers.toml", other / "back")  # and out again: gone from here
    assert rec.drain() == [("deleted", str(watched / "workers.toml"), None)]


def test_write_close_create_delete(tmp_path):
    rec = Recorder()
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


def test_two_names_of_one_folder_both_hear_and_removing_one_keeps_the_other(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    rec = Recorder()
    rec.watch.add(str(real))
    rec.watch.add(str(tmp_path / "link"))  # the same inode: one kernel watch, two names
    (real / "f").write_text("x")
    closed = {src for kind, src, _ in rec.drain() if kind == "closed"}
    assert closed == {str(real / "f"), str(tmp_path / "link" / "f")}
    rec.watch.remove(str(tmp_path / "link"))
    (real / "g").write_text("x")
    assert {src for kind, src, _ in rec.drain() if kind == "closed"} == {str(real / "g")}


def test_a_deleted_folder_is_forgotten(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    rec = Recorder()
    rec.watch.add(str(folder))
    folder.rmdir()
    wait_for(lambda: rec.drain() is not None and str(folder) not in rec.watch.folders, 5,
             message="the removed folder's watch to be dropped")
    folder.mkdir()
    rec.watch.add(str(folder))  # a new inode, watched again
    (folder / "f").write_text("x")
    assert ("closed", str(folder / "f"), None) in rec.drain()


def test_an_overflowed_queue_is_reported(tmp_path):
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    rec = Recorder()
    rec.watch.add(str(tmp_path))
    for i in range(limit // 2 + 10):  # two events each (create, close): past the queue's limit
        (tmp_path / f"f{i}").touch()
    kinds = [kind for kind, _, _ in rec.drain()]
    assert kinds[-1] == OVERFLOW


def test_the_master_runs_on_one_thread(start_master):
    master = start_master("""
        [workers.w]
        command = ["sleep", "60"]
        """)
    master.wait_running(1)
    assert os.listdir(f"/proc/{master.pid}/task") == [str(master.pid)]
