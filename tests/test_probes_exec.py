"""Exec probes (issue 27): the verdict as a table, the config's validation, and real masters
whose probe commands run through the spawner, in the instance's env and cwd, killed at their
timeout."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_for
from orchestrator.config.probes import parse_probes
from orchestrator.supervise.probe_exec import exec_verdict

# --- pure ----------------------------------------------------------------------------------


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


@pytest.mark.parametrize("result,ok,detail", [
    (0, True, "ok"),
    (3 << 8, False, "app: exit 3"),
    (9, False, "app: SIGKILL"),
    ("app: command not found", False, "app: command not found"),
])
def test_exec_verdicts(result: int | str, ok: bool, detail: str) -> None:
    assert exec_verdict(result, "app") == (ok, detail)


@pytest.mark.parametrize("target,message", [
    ("app healthcheck", "array of strings"), ([], "array of strings"), (["app", 3], "array of strings"),
    ([""], "array of strings"),
])
def test_bad_exec_probes_are_refused(target: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_probes({"liveness": {"exec": target}})


def test_an_exec_probe_has_no_status() -> None:
    with pytest.raises(ValueError, match="only an http probe"):
        parse_probes({"liveness": {"exec": ["true"], "status": 200}})


# --- real masters ----------------------------------------------------------------------------

# exits 0 once the file named by $FLAG exists in the working directory, else 3
CHECK = "import os, sys; sys.exit(0 if os.path.exists(os.environ['FLAG']) else 3)"


def _config(probe: str) -> str:
    return f'''
    [workers.app]
    command = "{sys.executable} -c 'import time; time.sleep(600)'"
    min_uptime = "0.2s"
    stop_timeout = "2s"
    env = {{ FLAG = "flag-{{{{ replica }}}}" }}
    probes = {{ {probe} }}
    '''


def test_exec_readiness_fails_until_a_file_exists(start_master, tmp_path: Path) -> None:
    argv = f'["{sys.executable}", "-c", "{CHECK}"]'
    master = start_master(_config(f'readiness = {{ exec = {argv}, period = "0.1s", failures = 1 }}'))
    row = wait_for(lambda: (r := master.status()["app"])["probes"]
                   and r["probes"]["readiness"]["checks"] >= 3 and r, 10, message="three checks")
    assert not row["ready"] and row["probes"]["readiness"]["last_failure"] == f"{sys.executable}: exit 3"
    (tmp_path / "flag-0").touch()  # in the instance's cwd, named by the instance's env
    row = wait_for(lambda: (r := master.status()["app"])["ready"] and r, 5, message="ready")
    assert row["probes"]["readiness"]["passing"] and row["restarts"] == 0


def test_exec_probe_is_killed_at_its_timeout_and_liveness_restarts(start_master, tmp_path: Path) -> None:
    marker = f"probe-marker-{os.getpid()}-{time.monotonic_ns()}"
    argv = f'["{sys.executable}", "-c", "import time; time.sleep(60)", "{marker}"]'
    master = start_master(_config(f'liveness = {{ exec = {argv}, period = "0.2s", timeout = "0.3s", '
                                  'failures = 2 }'))
    first = wait_for(lambda: master.status()["app"]["pid"], 10, message="running")
    began = time.monotonic()
    master.call("ping")  # a probe that never exits holds nothing up
    assert time.monotonic() - began < 0.1
    row = wait_for(lambda: (r := master.status()["app"])["pid"] not in (None, first) and r, 10,
                   message="restarted by liveness")
    assert row["reason"] == "liveness: timed out after 0.3s" and row["limit_kills"] == {"liveness": 1}

    def probes_running() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
    # each timed-out probe was killed: at most the one in flight is left, and none is the master's child
    assert len(probes_running()) <= 1
    assert all(p.ppid() != master.pid for p in probes_running())


def test_an_exec_probe_that_cannot_run_says_why_not_just_exit_127(start_master, tmp_path: Path) -> None:
    """A probe program that exists but cannot be executed (no x bit) fails with the kernel's
    words, where it used to say only `exit 127`; a probe that does run and exits 127 itself
    still says `exit 127`."""
    script = tmp_path / "check.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    master = start_master(_config(f'readiness = {{ exec = ["{script}"], period = "0.1s", failures = 1 }}')
                          + f'''
    [workers.own127]
    command = "sleep 600"
    probes = {{ readiness = {{ exec = ["sh", "-c", "exit 127"], period = "0.1s", failures = 1 }} }}
    ''')
    row = wait_for(lambda: (r := master.status()["app"])["probes"]
                   and r["probes"]["readiness"]["checks"] >= 2 and r, 10, message="two checks")
    assert row["probes"]["readiness"]["last_failure"] == f"{script}: Permission denied"
    own = wait_for(lambda: (r := master.status()["own127"])["probes"]
                   and r["probes"]["readiness"]["checks"] >= 2 and r, 10, message="two checks of own127")
    assert own["probes"]["readiness"]["last_failure"] == "sh: exit 127"
    script.chmod(0o755)
    wait_for(lambda: master.status()["app"]["ready"], 5, message="ready once the script is executable")
