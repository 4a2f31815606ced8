"""`orch status` ends its process without the interpreter's teardown (cli.end_now): what it
printed still arrives whole, its exit codes and one-line errors are kept, and a reader that
went away is not an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import orch

FLEET = """
[workers.web]
command = "sleep 1000"
replicas = 3
"""


def test_status_output_arrives_whole_in_a_file_and_errors_keep_their_exit_code(start_master, tmp_path):
    master = start_master(FLEET)
    master.wait_running(3)
    out = tmp_path / "status.json"
    with open(out, "wb") as sink:  # a file: the output is flushed before the process ends
        done = subprocess.run([sys.executable, "-m", "orchestrator", "status", "--json", "-c", str(master.config)],
                              stdout=sink, stderr=subprocess.PIPE, timeout=30)
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(out.read_text())] == ["web", "web-1", "web-2"]
    table = orch("status", "-c", str(master.config), timeout=30)
    assert table.returncode == 0 and table.stdout.splitlines()[-1] == "3 running", table.stdout
    missing = orch("status", "--json", "-c", str(tmp_path / "nowhere.toml"), timeout=30)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith("orch: ") and len(missing.stderr.splitlines()) == 1, missing.stderr
    (tmp_path / "idle.toml").write_text('[workers.x]\ncommand = "sleep 1"\n'
                                        '[orchestrator]\ncontrol_socket = "idle.sock"\n')
    nobody = orch("status", "--json", "-c", str(tmp_path / "idle.toml"), timeout=30)
    assert nobody.returncode == 3 and "no orch master is running" in nobody.stderr, nobody.stderr


def test_status_to_a_reader_that_went_away_exits_0_without_a_word(start_master):
    master = start_master(FLEET)
    master.wait_running(3)
    for args in (["status", "--json"], ["status"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first byte: every write fails with EPIPE
        try:
            done = subprocess.run([sys.executable, "-m", "orchestrator", *args, "-c", str(master.config)],
                                  stdout=write, stderr=subprocess.PIPE, timeout=30)
        finally:
            os.close(write)
        assert done.returncode == 0, (args, done.returncode, done.stderr)
        assert done.stderr == b"", (args, done.stderr)  # no "Exception ignored ... BrokenPipeError"
