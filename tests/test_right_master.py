"""Client commands reach the master of the config they name, never another (issue 23): each
config file of a folder gets its own socket, pidfile and logs, and a master found on the way
that runs another config refuses the command (exit 3) unless --socket names it. Also the
small CLI defects: negative timeouts and line counts, no config here, --socket where no
master is asked."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import Master, alive, orch, wait_for

WORKERS = '[workers.a]\ncommand = "sleep 1001"\n'
OTHER = '[workers.b]\ncommand = "sleep 1002"\n'
NO_ENV = {"ORCH_CONFIG": "", "ORCH_SOCKET": ""}  # whatever the shell running the tests set


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None):
    return orch(*args, cwd=cwd, timeout=20, env={**NO_ENV, **(env or {})})


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def names(result) -> set[str]:
    assert result.returncode == 0, result.stderr
    return {row["name"] for row in json.loads(result.stdout)}


def test_two_configs_in_one_folder_run_a_master_each(start_master, tmp_path):
    workers = start_master(WORKERS)
    other = start_master(OTHER, name="other.toml")
    a, b = workers.wait_running(1)["a"], other.wait_running(1)["b"]
    for master, stem in ((workers, "workers"), (other, "other")):  # the documented layout
        folder = tmp_path / ".orch" / stem
        assert master.socket == folder / "orch.sock" and master.socket.is_socket()
        assert int(master.pidfile.read_text()) == master.pid
        assert master.log_dir == folder / "logs" and master.log_dir.is_dir()
    assert names(cli("status", "--json", cwd=tmp_path)) == {"a"}
    assert names(cli("status", "--json", "-c", "other.toml", cwd=tmp_path)) == {"b"}
    stop = cli("stop", "-c", "other.toml", "b", cwd=tmp_path)
    assert stop.returncode == 0 and "stop: b" in stop.stdout, stop.stderr
    assert workers.pids() == {"a": a} and alive(a) and not alive(b)
    down = cli("down", "-c", "other.toml", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert other.proc.wait(10) == 0
    assert workers.proc.poll() is None and workers.pids() == {"a": a}


def test_commands_for_a_config_without_a_master_leave_the_folders_other_master_alone(start_master, tmp_path):
    """The issue's case: the demo runs, and `-c web.toml` of the same folder is not it."""
    workers = start_master(WORKERS)
    a = workers.wait_running(1)["a"]
    (tmp_path / "web.toml").write_text(OTHER)
    for args in (("status",), ("stop", "a"), ("down",), ("reload",), ("signal", "HUP", "a")):
        result = cli(*args, "-c", "web.toml", cwd=tmp_path)
        assert result.returncode == 3, (args, result.stderr)
        assert "no orch master is running" in one_line(result) and str(tmp_path / ".orch/web") in result.stderr
    assert workers.proc.poll() is None and workers.pids() == {"a": a}


def test_a_master_of_another_config_on_the_socket_is_refused_with_exit_3(start_master, tmp_path):
    """A config whose control_socket is another's: its file leads the client to the wrong master."""
    workers = start_master(WORKERS)
    a = workers.wait_running(1)["a"]
    (tmp_path / "third.toml").write_text(f'[orchestrator]\ncontrol_socket = "{workers.socket}"\n' + OTHER)
    for args in (("status",), ("status", "--json"), ("stop", "a"), ("restart", "a"), ("down",),
                 ("reload",), ("diff",), ("signal", "TERM", "a"), ("logs", "a")):
        result = cli(*args, "-c", "third.toml", cwd=tmp_path)
        if args[0] == "logs":  # the log folder is third's own: nothing of the other master's shows
            assert result.returncode == 1 and "no log matches 'a'" in one_line(result), result.stderr
            continue
        assert result.returncode == 3, (args, result.stderr)
        line = one_line(result)
        assert f"runs {workers.config}, not {tmp_path / 'third.toml'}" in line, line
        assert "--socket" in line and result.stdout == "", result.stdout
    assert workers.proc.poll() is None and workers.pids() == {"a": a}
    assert workers.call("status")["reloads"] == 0


def test_an_explicit_socket_reaches_any_master(start_master, tmp_path):
    workers = start_master(WORKERS)
    other = start_master(OTHER, name="other.toml")
    workers.wait_running(1)
    b = other.wait_running(1)["b"]
    sock = str(workers.socket)
    assert names(cli("status", "--json", "-c", "other.toml", "--socket", sock, cwd=tmp_path)) == {"a"}
    # $ORCH_SOCKET alone reaches its master; with a -c naming another config it is refused
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert names(cli("status", "--json", cwd=elsewhere, env={"ORCH_SOCKET": sock})) == {"a"}
    refused = cli("stop", "-c", str(other.config), "b", cwd=elsewhere, env={"ORCH_SOCKET": sock})
    assert refused.returncode == 3 and f"runs {workers.config}" in one_line(refused)
    assert other.pids() == {"b": b}
    stop = cli("stop", "--socket", sock, "-c", "other.toml", "a", cwd=tmp_path)
    assert stop.returncode == 0 and "stop: a" in stop.stdout, stop.stderr
    wait_for(lambda: workers.status()["a"]["state"] == "stopped", message="a stopped")
    assert other.pids() == {"b": b}


def test_the_same_config_by_another_path_is_the_same_master(start_master, tmp_path):
    workers = start_master(WORKERS)
    workers.wait_running(1)
    link = tmp_path.parent / (tmp_path.name + "-link")
    link.symlink_to(tmp_path)
    try:
        (tmp_path / "sub").mkdir()
        for config in (link / "workers.toml", tmp_path / "sub" / ".." / "workers.toml"):
            assert names(cli("status", "--json", "-c", str(config), cwd=tmp_path.parent)) == {"a"}, config
        alias = tmp_path / "alias.toml"  # a link to the file: its own default paths, but the same file
        alias.symlink_to("workers.toml")
        env = {"ORCH_SOCKET": str(workers.socket)}
        assert names(cli("status", "--json", "-c", str(alias), cwd=tmp_path, env=env)) == {"a"}
    finally:
        link.unlink()


def test_a_stale_record_does_not_lead_to_the_master_now_on_its_socket(start_master, tmp_path):
    """A master killed with SIGKILL leaves its record and its socket file behind; another
    config's master that has bound the same path since is not the one the record names."""
    first = start_master(WORKERS)
    first.wait_running(1)
    os.killpg(first.pid, signal.SIGKILL)
    first.proc.wait(5)
    assert first.socket.is_socket(), "a SIGKILLed master cannot remove its socket"
    sock = str(first.socket)
    start_master(f'[orchestrator]\ncontrol_socket = "{sock}"\n' + OTHER, name="other.toml", wait=False)

    def running_b() -> list[int]:
        shown = cli("status", "--json", "--socket", sock, cwd=tmp_path)
        rows = json.loads(shown.stdout) if shown.returncode == 0 else []
        return [r["pid"] for r in rows if r["name"] == "b" and r["state"] == "running"]
    b = wait_for(running_b, 15, interval=0.1, message="the other config's master on the same socket")
    result = cli("stop", "b", "-c", "workers.toml", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert f"runs {tmp_path / 'other.toml'}, not {first.config}" in one_line(result)
    assert running_b() == b


@pytest.mark.parametrize("args, message", [
    (("stop", "--timeout", "-1", "a"), "--timeout must be a positive number of seconds, not -1"),
    (("restart", "--timeout", "0", "a"), "--timeout must be a positive number of seconds, not 0"),
    (("start", "--timeout", "nan", "a"), "--timeout must be a positive number of seconds, not nan"),
    (("down", "--timeout", "-1"), "--timeout must be a positive number of seconds, not -1"),
    (("logs", "-n", "-5"), "logs -n must be 0 or more lines, not -5"),
    (("check", "--socket", "x.sock"), "unrecognized arguments: --socket x.sock"),
    (("--socket", "x.sock", "plan"), "plan does not talk to a master: --socket is for client commands"),
])
def test_arguments_no_command_can_use_are_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "workers.toml").write_text(WORKERS)
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
    if args[0] != "check":  # argparse's own errors come with a usage line
        one_line(result)


def test_bad_arguments_change_nothing_on_a_running_master(start_master, tmp_path):
    workers = start_master(WORKERS)
    a = workers.wait_running(1)["a"]
    for args in (("stop", "--timeout", "-1", "a"), ("down", "--timeout", "-1")):
        assert cli(*args, cwd=tmp_path).returncode == 2, args
    assert workers.proc.poll() is None and workers.pids() == {"a": a}


def test_commands_without_a_config_here_point_at_c(tmp_path):
    for args in (("status",), ("stop", "a"), ("logs",), ("check",), ("up",)):
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert one_line(result) == f"orch: no workers.toml in {tmp_path}: name the config with -c FILE " \
                                   "(or $ORCH_CONFIG)", result.stderr
    named = cli("status", "-c", "missing.toml", cwd=tmp_path)  # a named file: the located error
    assert named.returncode == 2 and f"{tmp_path / 'missing.toml'}: config file not found" in named.stderr


def test_only_client_commands_offer_socket(tmp_path):
    for command in ("up", "check", "plan", "export", "schema", "queues"):
        assert "--socket" not in cli(command, "--help", cwd=tmp_path).stdout, command
    for command in ("status", "stop", "down", "logs", "top", "diff"):
        assert "--socket" in cli(command, "--help", cwd=tmp_path).stdout, command
