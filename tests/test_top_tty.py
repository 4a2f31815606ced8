"""`orch top` in a real terminal (tmux) against a real master: rows, live updates, keys that
reach the master, the master going away, and a terminal left as it was found."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import orch, text_of, wait_for

PY = sys.executable
SLEEPER = json.dumps([PY, "-c", "import time\nprint('hello from the worker', flush=True)\ntime.sleep(1000)"])
CONFIG = f"""
[workers.alpha]
command = {SLEEPER}
matrix = {{ n = [1, 2, 3] }}

[workers.beta]
command = {SLEEPER}
name = "beta-{{{{ replica }}}}"
replicas = 2
"""


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


class Tmux:
    """One tmux server on its own socket: a terminal we can type into and read back."""

    def __init__(self, cwd: Path):
        if shutil.which("tmux") is None:
            raise AssertionError("tmux is not installed: run scripts/test-deps")
        self.name = f"orch-test-{uuid.uuid4().hex[:12]}"
        self.cwd = cwd

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout

    def start(self, command: str, width: int = 160, height: int = 40, env: dict | None = None) -> None:
        extra = [f"-e{k}={v}" for k, v in (env or {}).items()]
        conf = self.cwd / f"{self.name}.conf"
        conf.write_text("set -g remain-on-exit on\n")  # a pane that exits stays readable
        self.tmux("-f", str(conf), "new-session", "-d", "-x", str(width), "-y", str(height), *extra,
                  "-c", str(self.cwd), command)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []))

    def wait(self, predicate, timeout: float = 10.0, message: str = "the screen") -> str:
        last = {"screen": ""}

        def check():
            last["screen"] = self.screen()
            return predicate(last["screen"])
        try:
            wait_for(check, timeout, interval=0.05, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen was:\n{last['screen']}") from None
        return last["screen"]

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux(tmp_path):
    term = Tmux(tmp_path)
    yield term
    term.kill()


def top_command(master, *args: str) -> str:
    return shlex.join([PY, "-m", "orchestrator", "top", "-c", str(master.config), *args])


def row_of(screen: str, name: str) -> list[str]:
    for line in screen.splitlines():
        if line.startswith(name + " "):
            return line.split()
    return []


def names_in_order(screen: str) -> list[str]:
    return [line.split()[0] for line in screen.splitlines() if line.startswith(("alpha-", "beta-"))]


def test_rows_appear_and_a_killed_instance_shows_its_new_pid_and_restarts(start_master, tmux, tmp_path):
    master = start_master(CONFIG)
    pids = master.wait_running(5)
    tmux.start(top_command(master))
    screen = tmux.wait(lambda s: all(row_of(s, n) for n in pids), message="every instance's row")
    assert "NAME" in screen and "TEMPLATE" in screen and "5 instances: 5 running" in screen
    assert row_of(screen, "alpha-1")[:4] == ["alpha-1", "alpha", "running", str(pids["alpha-1"])]
    raw = tmp_path / "pane.out"  # the bytes the view writes from here on
    tmux.tmux("pipe-pane", "-o", f"cat > {shlex.quote(str(raw))}")
    os.kill(pids["alpha-1"], signal.SIGKILL)
    new = wait_for(lambda: master.pids()["alpha-1"] not in (None, pids["alpha-1"]) and master.pids()["alpha-1"],
                   5, message="the master to replace alpha-1")
    # The view refreshes every second: the new pid and the restart count show within 2 s.
    screen = tmux.wait(lambda s: row_of(s, "alpha-1")[3:4] == [str(new)], 2.0, "alpha-1's new pid")
    fields = row_of(screen, "alpha-1")
    assert fields[5] == "1" and "SIGKILL" in fields, fields
    # ...and in one piece: ncurses flushes at every cursor move, so a row updated by its changed
    # cells alone reached the terminal as several writes, and a reader between two of them saw
    # the new pid beside the old count (this test, on a busy machine).
    whole = re.compile(rf"alpha-1 +alpha +running +{new} +\S+ +1 +SIGKILL ")
    wait_for(lambda: whole.search(text_of(raw)), 2, message=f"alpha-1's row in one piece in {text_of(raw)!r}")


def test_filter_and_sort_keys(start_master, tmux):
    master = start_master(CONFIG)
    master.wait_running(5)
    tmux.start(top_command(master))
    tmux.wait(lambda s: len(names_in_order(s)) == 5, message="5 rows")
    tmux.keys("/")
    tmux.keys("-l", "template:beta")
    tmux.keys("Enter")
    screen = tmux.wait(lambda s: names_in_order(s) == ["beta-0", "beta-1"], message="only beta rows")
    assert "filter: template:beta (2 of 5)" in screen
    tmux.keys("Escape")
    tmux.wait(lambda s: len(names_in_order(s)) == 5, message="the filter cleared")
    tmux.keys("/")
    tmux.keys("-l", "alpha-[12]")
    tmux.wait(lambda s: names_in_order(s) == ["alpha-1", "alpha-2"], message="filtering as one types")
    tmux.keys("Enter", "Escape")
    tmux.wait(lambda s: names_in_order(s)[0] == "alpha-1", message="name order")
    tmux.keys("n")  # the same sort key again reverses
    screen = tmux.wait(lambda s: names_in_order(s) == ["beta-1", "beta-0", "alpha-3", "alpha-2", "alpha-1"],
                       message="reversed name order")
    assert "sort: name (reversed)" in screen
    master.call("restart", patterns=["alpha-2"])
    wait_for(lambda: master.status()["alpha-2"]["restarts"] == 1, 10, message="alpha-2 restarted")
    tmux.keys("x")  # most restarts first
    screen = tmux.wait(lambda s: names_in_order(s)[:1] == ["alpha-2"], message="sorted by restarts")
    assert "sort: restarts" in screen
    tmux.keys("t")  # longest uptime first: the freshly restarted alpha-2 goes last
    tmux.wait(lambda s: names_in_order(s)[-1:] == ["alpha-2"], message="sorted by uptime")


def test_a_restart_and_a_stop_from_the_view_reach_the_master(start_master, tmux):
    master = start_master(CONFIG)
    pids = master.wait_running(5)
    tmux.start(top_command(master))
    tmux.wait(lambda s: len(names_in_order(s)) == 5, message="5 rows")
    tmux.keys("Down")  # from alpha-1 to alpha-2
    tmux.keys("r")
    tmux.wait(lambda s: "restart alpha-2? y = this one, a = all 5 shown" in s, message="the confirmation")
    tmux.keys("y")
    wait_for(lambda: master.pids()["alpha-2"] not in (None, pids["alpha-2"]), 10,
             message="alpha-2 restarted by the master")
    assert {n: p for n, p in master.pids().items() if n != "alpha-2"} == \
        {n: p for n, p in pids.items() if n != "alpha-2"}
    tmux.wait(lambda s: "restart: alpha-2" in s, message="the outcome on the message line")
    # A filtered set: stop every beta after `a`.
    tmux.keys("/")
    tmux.keys("-l", "template:beta")
    tmux.keys("Enter", "s")
    tmux.wait(lambda s: "stop beta-0? y = this one, a = all 2 shown" in s, message="the confirmation")
    tmux.keys("a")
    wait_for(lambda: all(master.status()[n]["state"] == "stopped" for n in ("beta-0", "beta-1")), 10,
             message="beta stopped")
    tmux.wait(lambda s: row_of(s, "beta-0")[2:3] == ["stopped*"], message="beta-0 shown stopped (held)")
    tmux.keys("s", "n")  # anything but y/a cancels
    tmux.wait(lambda s: "stop cancelled" in s, message="the cancellation")


def test_the_log_key_shows_the_selected_instances_log(start_master, tmux):
    master = start_master(CONFIG)
    master.wait_running(5)
    tmux.start(top_command(master))
    tmux.wait(lambda s: len(names_in_order(s)) == 5, message="5 rows")
    tmux.keys("l")
    screen = tmux.wait(lambda s: "hello from the worker" in s, message="the log")
    assert "log of alpha-1" in screen
    tmux.keys("Escape")
    tmux.wait(lambda s: len(names_in_order(s)) == 5, message="back to the list")


def test_quitting_restores_the_terminal(start_master, tmux):
    master = start_master(CONFIG)
    master.wait_running(5)
    tmux.start("sh")
    tmux.keys("-l", f"echo BEFORE-TOP; {top_command(master)}; echo TOP-EXIT=$?")
    tmux.keys("Enter")
    tmux.wait(lambda s: len(names_in_order(s)) == 5, message="the view")
    assert "BEFORE-TOP" not in tmux.screen()  # on the alternate screen
    assert tmux.tmux("display-message", "-p", "#{alternate_on}").strip() == "1"
    tmux.keys("q")
    screen = tmux.wait(lambda s: "TOP-EXIT=0" in s, message="top to exit 0")
    assert "BEFORE-TOP" in screen and "NAME" not in screen and "alpha-1" not in screen
    assert tmux.tmux("display-message", "-p", "#{alternate_on}").strip() == "0"
    assert tmux.tmux("display-message", "-p", "#{cursor_flag}").strip() == "1"  # cursor visible again


def test_master_gone_says_so_and_keeps_the_last_picture(start_master, tmux):
    master = start_master(CONFIG)
    pids = master.wait_running(5)
    tmux.start(top_command(master))
    tmux.wait(lambda s: len(names_in_order(s)) == 5, message="5 rows")
    master.proc.send_signal(signal.SIGKILL)
    master.proc.wait(10)
    screen = tmux.wait(lambda s: "master gone" in s, 10, message="the master-gone message")
    assert row_of(screen, "alpha-1")[3] == str(pids["alpha-1"]) and len(names_in_order(screen)) == 5
    tmux.keys("q")
    tmux.wait(lambda s: "Pane is dead" in s or not s.strip(), message="top to exit")


def test_colour_by_state_unless_no_color(start_master, tmp_path):
    master = start_master(CONFIG)
    master.wait_running(5)
    seen = {}
    for env in ({}, {"NO_COLOR": "1"}):
        term = Tmux(tmp_path)
        try:
            term.start(top_command(master), env=env)
            term.wait(lambda s: len(names_in_order(s)) == 5, message="5 rows")
            seen[bool(env)] = term.screen(escapes=True)
        finally:
            term.kill()
    assert "\x1b[32mrunning" in seen[False]
    assert "\x1b[32m" not in seen[True] and "\x1b[7m" in seen[True]  # the selection still shows


def test_top_without_a_terminal_refuses_with_exit_2(start_master):
    master = start_master(CONFIG)
    result = orch("top", "-c", str(master.config), stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "orch: top needs a terminal; for scripts use `orch status --json`"]


def test_top_without_a_master_exits_3_before_taking_the_screen(tmp_path, tmux):
    (tmp_path / "workers.toml").write_text(CONFIG)
    tmux.start(shlex.join([PY, "-m", "orchestrator", "top", "-c", str(tmp_path / "workers.toml")])
               + "; echo TOP-EXIT=$?; sleep 60")
    screen = tmux.wait(lambda s: "TOP-EXIT=" in s, message="top to exit")
    assert "TOP-EXIT=3" in screen and "no orch master is running" in screen


def test_patterns_limit_the_rows_and_a_long_list_scrolls_and_fits_a_resized_terminal(start_master, tmux):
    many = 'command = "sleep 1000"\n'
    master = start_master(CONFIG + f"\n[workers.many]\n{many}name = \"many-{{{{ replica }}}}\"\nreplicas = 40\n")
    master.wait_running(45, timeout=20)
    tmux.start(top_command(master, "template:many", "alpha-3"), width=120, height=20)

    def rows(screen: str) -> list[str]:
        return [line.split()[0] for line in screen.splitlines() if line.startswith(("alpha-", "many-"))]
    # A capture may land in the middle of the first paint: wait for the picture with its rows,
    # 20 - 5 of them (4 header lines and the help line around the rows); more or fewer times out.
    screen = tmux.wait(lambda s: "many-0 " in s and len(rows(s)) == 20 - 5,
                       message="the first screenful of rows (15)")
    assert "alpha-1" not in screen and "filter: template:many alpha-3 (41 of 45)" in screen
    tmux.keys("End")

    def last_row(screen: str) -> str:
        lines = screen.rstrip("\n").splitlines()
        return lines[-2] if len(lines) > 1 and lines[-1].startswith("q quit") else ""
    # A capture may land in the middle of a repaint: wait for the whole expected picture.
    tmux.wait(lambda s: last_row(s).startswith("many-9 ") and "many-0 " not in s, message="scrolled to the end")
    tmux.tmux("resize-window", "-x", "50", "-y", "12")
    screen = tmux.wait(lambda s: "TEMPLATE" not in s and "NAME" in s and last_row(s).startswith("many-9 "),
                       message="columns dropped, the selection still on screen")
    lines = screen.rstrip("\n").splitlines()
    assert len(lines) == 12 and max(map(len, lines)) <= 50


@pytest.mark.parametrize("term, expected", [
    ("dumb", "orch: top cannot drive this terminal (TERM=dumb); for scripts use `orch status --json`"),
    ("no-such-terminal", "orch: top does not know this terminal (TERM=no-such-terminal); "),
])
def test_a_terminal_curses_cannot_drive_is_refused_in_one_line(start_master, tmux, term, expected):
    master = start_master(CONFIG)
    tmux.start(f"TERM={term} {top_command(master)}; echo TOP-EXIT=$?; sleep 60")
    screen = tmux.wait(lambda s: "TOP-EXIT=" in s, message="top to exit")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[0].startswith(expected) and lines[1] == "TOP-EXIT=2", screen


def test_ctrl_c_leaves_a_restored_terminal(start_master, tmux):
    master = start_master(CONFIG)
    master.wait_running(5)
    tmux.start("sh")
    tmux.keys("-l", f"{top_command(master)}; echo TOP-EXIT=$?")
    tmux.keys("Enter")
    tmux.wait(lambda s: len(names_in_order(s)) == 5, message="the view")
    tmux.keys("C-c")
    screen = tmux.wait(lambda s: "TOP-EXIT=130" in s, message="top to exit 130")
    assert "Traceback" not in screen and "alpha-1" not in screen
    assert tmux.tmux("display-message", "-p", "#{alternate_on}").strip() == "0"


def test_c_shows_each_autoscaled_cell_live(start_master, tmux, tmp_path):
    (tmp_path / "n-a.txt").write_text("0\n")
    (tmp_path / "n-b.txt").write_text("0\n")
    master = start_master(f"""
    [workers.sleeper]
    command = {SLEEPER}
    matrix = {{ part = ["a", "b"] }}
    replicas = {{ min = 1, max = 3 }}
    backlog = {{ command = ["cat", "n-{{{{ part }}}}.txt"], per = 1 }}
    scale = {{ up_after = "0.2s", down_after = "30s", step = 3 }}
    stop_timeout = "1s"
    """)
    master.wait_running(2)
    tmux.start(top_command(master))
    tmux.wait(lambda s: "c cells" in s and row_of(s, "sleeper-a")[1:3] == ["sleeper", "running"],
              message="the list and its help line")
    tmux.keys("c")
    screen = tmux.wait(lambda s: row_of(s, "sleeper-a")[:4] == ["sleeper-a", "1/1", "1-3", "0"], message="cell rows")
    assert "CELL" in screen and "LAST DECISION" in screen and "started at 1" in screen, screen
    assert row_of(screen, "sleeper-b")[:4] == ["sleeper-b", "1/1", "1-3", "0"]
    assert not [line for line in screen.splitlines() if line.startswith(("NAME ", "sleeper")) and "running" in line], \
        "the cells replace the instance rows"
    (tmp_path / "n-b.txt").write_text("3\n")
    screen = tmux.wait(lambda s: row_of(s, "sleeper-b")[:4] == ["sleeper-b", "3/3", "1-3", "3"], 8,
                       message="sleeper-b scaled up, live")
    assert re.search(r"sleeper-b .*\d\d:\d\d:\d\d .*up to 3", screen), screen  # the decision, its time, reason
    tmux.keys("c")
    screen = tmux.wait(lambda s: "\nNAME " in s and "c cells" in s, message="back to the instance list")
    assert sum(1 for line in screen.splitlines() if line.startswith("sleeper-b")) == 3, screen


def test_a_terminal_that_hangs_up_without_sighup_ends_the_view(start_master):
    """The terminal's other side closes and no SIGHUP comes (ignored here, as under nohup):
    every key read fails at once from then on. The view used to spin on that (about half a
    core, for ever); it now sees the hang-up and exits."""
    import fcntl
    import select
    import struct
    import termios
    import time

    import psutil

    master = start_master(CONFIG)
    master.wait_running(5)
    pty_master, pty_slave = os.openpty()
    fcntl.ioctl(pty_slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    view = subprocess.Popen([sys.executable, "-m", "orchestrator", "top", "-c", str(master.config)],
                            stdin=pty_slave, stdout=pty_slave, stderr=pty_slave, start_new_session=True,
                            env={**os.environ, "TERM": "xterm"},
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    os.close(pty_slave)
    try:
        screen = b""
        deadline = time.monotonic() + 15
        while b"alpha-" not in screen and time.monotonic() < deadline:  # the first rows: it is in its loop
            if select.select([pty_master], [], [], 0.2)[0]:
                screen += os.read(pty_master, 65536)
        assert b"alpha-" in screen, screen[-500:]
        os.close(pty_master)
        pty_master = -1
        assert view.wait(timeout=5) == 1
    finally:
        if pty_master >= 0:
            os.close(pty_master)
        if view.poll() is None:
            cpu = sum(psutil.Process(view.pid).cpu_times()[:2])
            view.kill()
            view.wait()
            raise AssertionError(f"orch top still running 5 s after its terminal hung up ({cpu:.1f} s of CPU)")
