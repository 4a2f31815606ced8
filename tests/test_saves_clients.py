"""Client commands reach the running master whatever state the file on disk is in."""

from __future__ import annotations

import signal

from conftest import alive, orch, wait_for

FLEET = """
[orchestrator]
watch = {watch}
[workers.a]
command = "sleep 1001"
[workers.b]
command = "sleep 1002"
[workers.say]
command = ["sh", "-c", "echo hello from say; exec sleep 1003"]
"""
BROKEN = '[workers.a]\ncommand = "sleep 1001"\n[workers.b\ncommand = "sleep 1003"\n'


def test_status_reload_and_down_work_while_the_file_does_not_parse(start_master, tmp_path):
    master = start_master(FLEET.format(watch="true"))
    before = master.wait_running(3)
    master.config.write_text(BROKEN)
    wait_for(lambda: master.call("status")["last_reload_error"], 10, message="the failed reload")
    status = orch("status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "workers.toml:3: TOML syntax error" in status.stdout
    assert "Traceback" not in status.stdout + status.stderr
    reload = orch("reload", cwd=tmp_path)
    assert reload.returncode == 2 and "reload failed, nothing changed" in reload.stderr, reload.stderr
    assert "workers.toml:3: TOML syntax error" in reload.stderr
    assert master.pids() == before
    logs = orch("logs", "say", cwd=tmp_path)  # the log folder comes from the master's record
    assert logs.returncode == 0 and "hello from say" in logs.stdout, logs.stderr
    down = orch("down", "--timeout", "15", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert master.proc.wait(10) == 0
    assert not any(alive(pid) for pid in before.values())


def test_status_shows_that_the_file_on_disk_does_not_load_before_any_reload(start_master, tmp_path):
    master = start_master(FLEET.format(watch="false"))
    before = master.wait_running(3)
    master.config.write_text(FLEET.format(watch="false").replace('"sleep 1002"', "12"))
    status = orch("status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "THE CONFIG ON DISK DOES NOT LOAD" in status.stdout
    assert "workers.toml:7: workers.b.command: expected a string or a non-empty array" in status.stdout
    assert master.call("status")["last_reload_error"] is None and master.pids() == before
    master.config.write_text(FLEET.format(watch="false"))
    assert "DOES NOT LOAD" not in orch("status", cwd=tmp_path).stdout


def test_socket_option_and_env_reach_a_master_from_anywhere(start_master, tmp_path):
    master = start_master(FLEET.format(watch="true"))
    master.wait_running(3)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # no workers.toml here
    by_option = orch("status", "--socket", str(master.socket), cwd=elsewhere)
    assert by_option.returncode == 0 and "sleep" not in by_option.stderr, by_option.stderr
    assert "a " in by_option.stdout and "running" in by_option.stdout
    by_env = orch("status", "--json", cwd=elsewhere, env={"ORCH_SOCKET": str(master.socket)})
    assert by_env.returncode == 0 and '"name": "b"' in by_env.stdout, by_env.stderr
    nothing = orch("status", cwd=elsewhere)
    assert nothing.returncode == 2 and nothing.stderr == (
        f"orch: no workers.toml in {elsewhere}: name the config with -c FILE (or $ORCH_CONFIG)\n")


def test_a_config_with_a_custom_socket_is_found_while_broken(start_master, tmp_path):
    master = start_master('[orchestrator]\ncontrol_socket = "run/ctl.sock"\n[workers.a]\ncommand = "sleep 1001"\n',
                          wait=False)
    wait_for(lambda: (tmp_path / "run" / "ctl.sock").exists(), 10, message="the custom socket")
    wait_for(lambda: master.descendants(), 10, message="the instance")  # remembered for the clean-up
    master.config.write_text("[orchestrator\n")
    status = orch("status", cwd=tmp_path)
    assert status.returncode == 0 and "TOML syntax error" in status.stdout, status.stderr
    # A killed master leaves its record: the client sees the socket is gone and says so.
    master.proc.send_signal(signal.SIGKILL)
    master.proc.wait(10)
    (tmp_path / "run" / "ctl.sock").unlink()
    gone = orch("status", cwd=tmp_path)
    assert gone.returncode == 2 and "TOML syntax error" in gone.stderr and "Traceback" not in gone.stderr
