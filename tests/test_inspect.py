"""`orch inspect NAME`: the instance's whole process tree as psutil sees it (issue 25)."""

from __future__ import annotations

import json
import os
import sys

from conftest import orch, wait_for

PARENT = """
import os, socket, subprocess, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
open("port", "w").write(str(srv.getsockname()[1]))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open("child", "w").write(str(child.pid))
time.sleep(300)
"""


def test_inspect_shows_the_tree_with_parentage_and_the_listening_socket(start_master, tmp_path):
    (tmp_path / "parent.py").write_text(PARENT)
    master = start_master(f"""
        [workers.web]
        command = ["{sys.executable}", "parent.py"]
        stop_timeout = "2s"
    """)
    pid = master.wait_running(1)["web"]
    wait_for(lambda: (tmp_path / "child").exists() and (tmp_path / "port").exists(), 10,
             message="the worker's child and socket")
    child, port = int((tmp_path / "child").read_text()), int((tmp_path / "port").read_text())

    result = orch("inspect", "web", "--json", "-c", str(master.config))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    by_pid = {row["pid"]: row for row in found["processes"]}
    assert set(by_pid) == {pid, child}, by_pid.keys()
    assert by_pid[child]["ppid"] == pid and by_pid[child]["depth"] == 1 and by_pid[pid]["depth"] == 0
    assert f"127.0.0.1:{port}" in by_pid[pid]["listening"]
    for row in by_pid.values():
        assert row["rss"] > 0 and row["uss"] > 0 and row["pss"] > 0 and row["threads"] >= 1
        assert row["user"] == "root" if os.geteuid() == 0 else row["user"]
        assert row["cwd"] == str(tmp_path) and row["fds"] >= 3
    assert by_pid[pid]["cmdline"][-1] == "parent.py"

    text = orch("inspect", "web", "-c", str(master.config))
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0] == "web: running, 2 processes"
    assert any(line.startswith(f"  {child} ") for line in lines), "the child is indented under its parent"
    assert f"{pid}: listens on 127.0.0.1:{port}" in text.stdout


def test_inspect_of_an_unknown_name_is_one_line_and_exit_2(start_master):
    master = start_master("""
        [workers.web]
        command = "sleep 300"
    """)
    master.wait_running(1)
    result = orch("inspect", "nope", "-c", str(master.config))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no instance named 'nope'" in result.stderr
