"""The master never goes down, freezes or wedges because of what it is given (issue 22):
durations past what the selector takes, spawn batches past the spawner's channel, values
exec cannot take. Each case ran against a real master; the template budget cases are in
tests/test_render_budget.py."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import alive, orch, wait_for

from orchestrator.loop import MAX_WAIT, EventLoop
from orchestrator.supervise.states import State


def _sleeper(extra: str = "") -> str:
    return f"""
        [workers.w]
        command = "sleep 300"
        stop_timeout = "2s"
        {extra}
    """


def test_a_thirty_day_lifetime_does_not_end_the_master(start_master):
    # epoll refuses waits over 24.8 days: this config killed the master 0.1 s after start
    master = start_master(_sleeper('max_lifetime = "30d"'))
    pid = master.wait_running(1)["w"]
    master.call("status")
    time.sleep(0.3)  # the crash came from the first wait of the loop; give it several turns
    assert master.proc.poll() is None, master.stderr()
    assert master.pids()["w"] == pid


@pytest.mark.parametrize("key, value, message", [
    ("timeout", '"' + "9" * 400 + 's"', "at most 10 years"),
    ("timeout", "1e400", "at most"),
    ("max_lifetime", '"400d"', "at most 365d"),
    ("backoff", '{ initial = "2d" }', "at most 1d"),
    ("min_uptime", "nan", "cannot be negative"),
])
def test_a_duration_past_its_bound_is_a_located_error(tmp_path, key, value, message):
    config = tmp_path / "workers.toml"
    config.write_text(_sleeper(f"{key} = {value}"))
    result = orch("check", "-c", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    first = result.stderr.splitlines()[0]
    assert f"{config}:5:" in first and message in first, result.stderr
    assert "Traceback" not in result.stderr
    assert len(first) < 300, "the error echoes a huge value in full"


def test_settings_durations_are_bounded_too(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[orchestrator]\ncheck_interval = "1us"\nsettle = "2h"\n' + _sleeper())
    result = orch("check", "-c", str(config))
    assert result.returncode == 2
    assert "check_interval" in result.stderr and "settle: must be at most 1h" in result.stderr


def test_the_loop_never_waits_past_what_epoll_takes():
    now = [0.0]
    loop = EventLoop(clock=lambda: now[0])
    try:
        fired = []
        loop.call_later(40 * 86400.0, lambda: fired.append(1))
        loop.call_later(float("inf"), lambda: fired.append(2))
        loop.call_later(float("nan"), lambda: fired.append(3))
        assert loop._next_timeout() == 0  # NaN is "now", not a crash
        loop.run_once(0)
        assert fired == [3]
        assert loop._next_timeout() == MAX_WAIT
        loop.run_once(0.001)  # a real select with the clamped timeout when due: no OverflowError
        now[0] = 40 * 86400.0
        loop.run_once(0)
        assert fired == [3, 1]
    finally:
        loop.close()


def test_a_stop_with_a_long_timeout_still_works(start_master):
    master = start_master(_sleeper().replace('"2s"', '"1d"'))
    pid = master.wait_running(1)["w"]
    assert master.call("stop", patterns=["w"])
    wait_for(lambda: not alive(pid), 10, message="the stopped sleep to exit")
    assert master.proc.poll() is None
    master.proc.send_signal(signal.SIGTERM)
    assert master.proc.wait(15) == 0


# --- spawn batches ------------------------------------------------------------------------

def test_batches_are_cut_by_bytes_and_count():
    from orchestrator.spawn.child import MAX_FDS_PER_MESSAGE, MESSAGE_BYTES, in_batches
    sizes = [20_000] * 64
    cuts = list(in_batches(sizes, size=lambda n: n))
    assert all(sum(sizes[a:b]) <= MESSAGE_BYTES for a, b in cuts)
    assert [b - a for a, b in cuts] == [52, 12]
    assert list(in_batches([1] * 130, size=lambda n: n)) == [(0, 64), (64, 128), (128, 130)]
    assert MAX_FDS_PER_MESSAGE == 64
    big = [10, 3 * MESSAGE_BYTES, 10]
    assert list(in_batches(big, size=lambda n: n)) == [(0, 1), (1, 2), (2, 3)]  # alone, not dropped
    assert list(in_batches([], size=lambda n: n)) == []


def test_sixty_four_instances_with_big_distinct_env_values_all_run(start_master):
    # 64 x 20 KB in one batch was a truncated pickle: every instance stuck in "starting"
    master = start_master("""
        [workers.w]
        command = "sleep 300"
        matrix = { n = "{{ range(64) | list }}" }
        env = { BIG = "{{ (n | string) * 20000 }}" }
        stop_timeout = "2s"
    """)
    master.wait_running(64, timeout=30)
    assert master.call("reload")["applied"] is not None  # reloads are not wedged behind it


def test_seventy_preloaded_workers_with_big_kwargs_all_run(start_master, tmp_path):
    (tmp_path / "bigkw.py").write_text(
        "from orchestrator.worker import Worker\n"
        "import time\n"
        "class W(Worker):\n"
        "    def run(self):\n"
        "        assert len(self.kwargs['hosts']) == 600\n"
        "        time.sleep(0.5)\n"
        "        return False\n")
    hosts = ", ".join(f'"host-{i:05d}.example.org"' for i in range(600))  # ~16 KB
    master = start_master(f"""
        [workers.w]
        target = "bigkw:W"
        preload = true
        matrix = {{ n = "{{{{ range(70) | list }}}}" }}
        kwargs = {{ hosts = [{hosts}], n = "{{{{ n }}}}" }}
        stop_timeout = "2s"
    """)
    master.wait_running(70, timeout=60)


def test_an_env_value_exec_cannot_take_is_a_located_error(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[workers.w]\ncommand = "sleep 300"\nenv = { BIG = "{{ \'x\' * 200000 }}" }\n')
    result = orch("check", "-c", str(config))
    assert result.returncode == 2, result.stdout
    assert f"{config}:3: workers.w.env: w: BIG's value is 200,000 characters" in result.stderr


@pytest.mark.parametrize("env, message", [
    ('{ "A=B" = "1" }', "is not a variable name"),
    ('{ "" = "1" }', "is not a variable name"),
    ('{ A = "x\\u0000y" }', "NUL"),
])
def test_env_names_and_values_exec_refuses_are_located_errors(tmp_path, env, message):
    config = tmp_path / "workers.toml"
    config.write_text(f'[workers.w]\ncommand = "sleep 300"\nenv = {env}\n')
    result = orch("check", "-c", str(config))
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_nul_in_argv_is_a_located_error(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[workers.w]\ncommand = ["sleep", "3\\u00000"]\n')
    result = orch("check", "-c", str(config))
    assert result.returncode == 2 and "workers.w.command" in result.stderr and "NUL" in result.stderr


def test_out_of_fds_for_pipes_backs_off_instead_of_wedging(start_master, tmp_path):
    # Every instance needs a pipe: with the fd table full, the ones that get none fail and
    # back off; the master still answers, and `orch down` returns.
    import resource
    import subprocess
    import sys
    config = tmp_path / "workers.toml"
    config.write_text("""
        [workers.w]
        command = "sleep 300"
        replicas = 80
        stop_timeout = "2s"
        backoff = { initial = "0.2s", max = "0.5s" }
    """.replace("\n        ", "\n"))
    limit = (48, 48)
    log = open(tmp_path / "master.err", "wb")  # a pipe nobody reads would fill and stop the master
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-c", str(config), "--quiet"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit))
    try:
        def status():
            result = orch("status", "--json", "-c", str(config), timeout=10)
            return result.returncode == 0 and __import__("json").loads(result.stdout)
        rows = wait_for(status, 20, message="status")
        # The master refuses a pipe at once: those instances back off, and once the delay
        # reaches backoff.max they are "crash-looping" (a loaded machine's first status
        # often sees only that state; the test once looked for a "crashloop" that never is).
        waiting = {State.BACKOFF.value, State.CRASHLOOP.value}
        wait_for(lambda: any(r["state"] in waiting for r in status() or ()), 10,
                 message="instances without a pipe to back off")
        # No instance wedges in "starting" without a pid (a spawn whose answer never comes):
        # each one seen there is seen in another state soon after (backoff.max is 0.5 s).
        def pidless(row):
            return row["state"] == State.STARTING.value and row["pid"] is None
        stuck = {r["name"] for r in status() or () if pidless(r)}

        def moved_on() -> bool:
            stuck.difference_update(r["name"] for r in status() or () if not pidless(r))
            return not stuck
        wait_for(moved_on, 10, message=f"instances seen starting without a pid to move on: {stuck}")
        assert rows
        down = orch("down", "-c", str(config), "--timeout", "20", timeout=30)
        assert down.returncode == 0, down.stdout + down.stderr
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- orch check is bounded -------------------------------------------------------------------

def _check(tmp_path, text: str, timeout: float = 20):
    config = tmp_path / "workers.toml"
    config.write_text(text)
    return config, orch("check", "-c", str(config), timeout=timeout)


def test_ten_thousand_problems_print_as_fifty_lines(tmp_path):
    tables = "".join(f'[workers.w{i}]\ncommand = "sleep 1"\nstop_timeout = "x"\n' for i in range(3000))
    config, result = _check(tmp_path, tables)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 50, len(lines)
    assert lines[-1] == "... and 2951 more problems", lines[-1]
    assert lines[0].startswith(f"orch: config error: {config}:3: workers.w0.stop_timeout")


def test_an_error_never_echoes_a_huge_value_in_full(tmp_path):
    config, result = _check(tmp_path, '[workers.w]\ncommand = "sleep 1"\nrestart = "' + "x" * 400_000 + '"\n')
    assert result.returncode == 2
    assert len(result.stderr) < 1000 and "characters)" in result.stderr, result.stderr[:300]


def test_one_undefined_name_over_a_matrix_is_one_line_with_its_count(tmp_path):
    config, result = _check(tmp_path, """
[workers.w]
command = "sleep 1"
name = "w-{{ nope }}-{{ a }}-{{ b }}"
matrix = { a = "{{ range(30) | list }}", b = "{{ range(10) | list }}" }
""")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "'nope' is undefined" in lines[0] and "(and 299 more instances like it)" in lines[0]


def test_problems_print_in_line_order(tmp_path):
    config, result = _check(tmp_path, """
[workers.b]
command = "echo {{ undefined_b }}"

[workers.a]
command = "sleep 1"
stop_timeout = "x"
""")
    lines = [line for line in result.stderr.splitlines() if str(config) in line]
    numbers = [int(line.split(str(config) + ":")[1].split(":")[0]) for line in lines]
    assert numbers == sorted(numbers), lines


@pytest.mark.parametrize("text, message", [
    ('[workers."a\\nb"]\ncommand = "sleep 1"\n', "may use only letters"),
    ('[workers.w]\ncommand = "sleep 1"\nreplicas = 1000000000\n', "at most 100,000"),
    ('[orchestrator]\nmax_instances = 1000000000000\n[workers.w]\ncommand = "sleep 1"\n', "at most 1,000,000"),
    ('[workers.w]\ncommand = "sleep 1"\nreplicas = 1e9\n', "expected a whole number"),
])
def test_what_can_never_run_is_refused(tmp_path, text, message):
    config, result = _check(tmp_path, text)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_includes_are_read_only_from_regular_files_under_the_size_limit(tmp_path):
    import os
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    (tmp_path / "big.toml").write_text("# x\n" * 200_000)
    config, result = _check(tmp_path, '[orchestrator]\ninclude = ["*.toml"]\n[workers.w]\ncommand = "sleep 1"\n',
                            timeout=10)
    assert result.returncode == 2
    assert "fifo.toml: cannot read config file: not a regular file (a FIFO)" in result.stderr
    assert "zero.toml: cannot read config file: not a regular file (a device)" in result.stderr
    assert "big.toml: cannot read config file: the file is 800,000 bytes" in result.stderr


def test_a_64_mib_file_is_refused_at_once(tmp_path):
    config = tmp_path / "workers.toml"
    with open(config, "w") as handle:
        handle.write('[workers.w]\ncommand = "sleep 1"\n')
        handle.write("# padding\n" * (64 * 2**20 // 10 - 10))
    began = time.monotonic()
    result = orch("check", "-c", str(config), timeout=20)
    assert result.returncode == 2 and "orch reads config files of up to" in result.stderr
    assert time.monotonic() - began < 5


def test_check_reports_render_errors_beside_an_unknown_key(tmp_path):
    config, result = _check(tmp_path, """
[workers.a]
command = "sleep 1"
stop_timout = "1s"

[workers.b]
command = "echo {{ nope }}"
""")
    assert result.returncode == 2
    assert "workers.a.stop_timout: unknown key" in result.stderr
    assert "workers.b.command: cannot render for b: 'nope' is undefined" in result.stderr


def test_a_broken_shared_table_does_not_cascade_into_render_errors(tmp_path):
    config, result = _check(tmp_path, """
vars = "not a table"

[workers.b]
command = "echo {{ nope }}"
""")
    assert result.returncode == 2
    assert "undefined" not in result.stderr, result.stderr


def test_a_control_socket_without_room_for_its_notify_neighbour_is_one_line_not_a_traceback(tmp_path):
    # `.orch/workers/orch.sock` under a folder deep enough that the path is 104 bytes: it fits,
    # `orch check` and exports take it, but the notify socket beside it (+ .notify) cannot.
    tail = len("/.orch/workers/orch.sock")
    folder = tmp_path / ("d" * (104 - tail - len(str(tmp_path)) - 1))
    folder.mkdir()
    config = folder / "workers.toml"
    config.write_text('[workers.w]\ncommand = "sleep 1000"\n')
    assert len(str(folder / ".orch/workers/orch.sock")) == 104
    assert orch("check", "-c", str(config), timeout=20).returncode == 0
    result = orch("up", "-c", str(config), timeout=20)
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines()[-1].startswith("orch: orchestrator.control_socket: cannot bind "), result.stderr
    assert "choose a shorter control_socket" in result.stderr and "Traceback" not in result.stderr
    import psutil
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if str(folder) in " ".join(p.info["cmdline"] or [])], 5, message="nothing left running")
