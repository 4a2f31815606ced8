"""Instance logs with real masters: one file per instance, size rotation, SIGUSR1 reopen,
`orch logs` (tail, prefixes, follow) and the foreground echo on the master's stdout."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import Master, orch, text_of, wait_for

PY = sys.executable


def command(code: str, *args: str) -> str:
    """A TOML `command = [...]` value running a Python snippet."""
    return json.dumps([PY, "-c", textwrap.dedent(code), *args])


def logs(master) -> Path:
    return master.log_dir


def cli(master, *args: str, **kw) -> subprocess.CompletedProcess:
    return orch(*args, "-c", str(master.config), timeout=kw.pop("timeout", 20), **kw)


# --- one file per instance ---------------------------------------------------------------
SAY = command("""
    import os, time
    print("I am", os.environ["ORCH_INSTANCE"], flush=True)
    time.sleep(1000)
""")


def test_each_instance_writes_its_own_file_under_a_file_safe_name(start_master):
    master = start_master(f"""
        [workers.svc]
        command = {SAY}
        matrix = {{ addr = ["db:5432", "db_5432", "mail@host"] }}
        [workers.odd]
        command = {SAY}
        name = "odd#1*?[x]"
    """)
    master.wait_running(4)
    folder = logs(master)
    expected = ["svc-db:5432", "svc-db_5432", "svc-mail@host", "odd#1*?[x]"]
    wait_for(lambda: len(list(folder.glob("*.log"))) == 4, message="four log files")
    files = sorted(p.name for p in folder.glob("*.log"))
    assert "svc-mail@host.log" in files, files  # '@' is file-safe and kept as it is
    assert all(re.fullmatch(r"[A-Za-z0-9._@+=%~-]+\.log", f) for f in files), files
    for name in expected:
        from orchestrator.observe.logs import log_path
        path = log_path(folder, name)
        assert path.parent == folder and path.name in files
        # print() may reach the pipe in pieces: poll for the whole line, then check nothing else came.
        wait_for(lambda: text_of(path).endswith("\n"), message=f"{name}'s output")
        assert text_of(path) == f"I am {name}\n", f"{path.name} holds exactly {name}'s output"
        shown = cli(master, "logs", name, "-n", "5")
        assert shown.returncode == 0 and shown.stdout == f"I am {name}\n", shown
    both = cli(master, "logs", "svc-db?5432")  # patterns match instance names, not file names
    assert both.stdout.splitlines() == ["svc-db:5432 | I am svc-db:5432", "svc-db_5432 | I am svc-db_5432"]


# --- rotation -----------------------------------------------------------------------
CHATTY = command("""
    import sys, time
    for i in range(300):
        print(f"line {i:05d} " + "x" * 80, flush=True)
        time.sleep(0.003)
    print("done", flush=True)
    time.sleep(1000)
""")
LIMIT = 2048
SLACK = 1024  # a file exceeds the limit only by a single write (several lines read at once)


def lines_of(path: Path) -> list[str]:
    return text_of(path).splitlines()


def check_rotated(folder: Path, name: str, backups: int) -> None:
    base = folder / f"{name}.log"
    wait_for(lambda: "done" in text_of(base), 10, message=f"{name}'s last line")
    chain = [folder / f"{name}.log.{i}" for i in range(backups, 0, -1)] + [base]
    assert all(p.exists() for p in chain), sorted(os.listdir(folder))
    assert not (folder / f"{name}.log.{backups + 1}").exists()
    for path in chain:
        assert path.stat().st_size <= LIMIT + SLACK, (path.name, path.stat().st_size)
    for path in chain[:-1]:
        assert path.stat().st_size > LIMIT - 600, f"{path.name} was rotated before it was full"
    text = [line for path in chain for line in lines_of(path)]
    assert text[-1] == "done"
    numbers = [int(line.split()[1]) for line in text[:-1]]
    assert numbers == list(range(numbers[0], 300)), "the kept files hold a gap-free tail of the output"
    assert numbers[0] > 0, "the oldest output was dropped"


def test_rotation_at_a_size_set_in_the_template(start_master):
    master = start_master(f"""
        [workers.chat]
        command = {CHATTY}
        log_max_size = "2KiB"
        log_backups = 2
        [workers.quiet]
        command = {CHATTY}
    """)
    master.wait_running(2)
    check_rotated(logs(master), "chat", 2)
    wait_for(lambda: "done" in text_of(logs(master) / "quiet.log"), 10, message="quiet's last line")
    assert sorted(p.name for p in logs(master).glob("quiet.log*")) == ["quiet.log"], "the default: 50MiB"


def test_rotation_at_a_size_set_for_the_whole_orchestrator(start_master):
    master = start_master(f"""
        [orchestrator]
        log_max_size = "2KiB"
        log_backups = 2
        [workers.chat]
        command = {CHATTY}
        [workers.nobackup]
        command = {CHATTY}
        log_backups = 0
    """)
    master.wait_running(2)
    check_rotated(logs(master), "chat", 2)
    folder = logs(master)
    wait_for(lambda: "done" in text_of(folder / "nobackup.log"), 10, message="nobackup's last line")
    assert sorted(p.name for p in folder.glob("nobackup.log*")) == ["nobackup.log"]
    assert (folder / "nobackup.log").stat().st_size <= LIMIT + SLACK


# --- SIGUSR1 --------------------------------------------------------------------------
TICK = command("""
    import sys, time
    for i in range(100000):
        print("tick", i, flush=True)
        time.sleep(float(sys.argv[1]))
""", "0.03")


def ticks(path: Path) -> list[int]:
    """The ticks of complete lines: with PYTHONUNBUFFERED (set in CI) print writes "tick ",
    the number and the newline separately, so the file may end in half a line."""
    complete = text_of(path).split("\n")[:-1]
    return [int(line.split()[1]) for line in complete if line.startswith("tick ")]


def test_sigusr1_reopens_every_log_file(start_master):
    master = start_master(f"""
        [workers.t]
        command = {TICK}
        replicas = 2
    """)
    master.wait_running(2)
    folder = logs(master)
    names = ("t", "t-1")
    wait_for(lambda: all(len(ticks(folder / f"{n}.log")) >= 2 for n in names), message="some ticks")
    for name in names:
        os.rename(folder / f"{name}.log", folder / f"{name}.log.old")
    sizes = {n: (folder / f"{n}.log.old").stat().st_size for n in names}
    # without the signal, output keeps going to the renamed files
    wait_for(lambda: all((folder / f"{n}.log.old").stat().st_size > sizes[n] for n in names),
             message="output to the renamed files")
    assert not any((folder / f"{n}.log").exists() for n in names)

    os.kill(master.pid, signal.SIGUSR1)
    wait_for(lambda: all(len(ticks(folder / f"{n}.log")) >= 2 for n in names), message="fresh files")
    old = {n: ticks(folder / f"{n}.log.old") for n in names}
    wait_for(lambda: all(len(ticks(folder / f"{n}.log")) >= 4 for n in names), message="more ticks")
    for name in names:
        assert ticks(folder / f"{name}.log.old") == old[name], "nothing more lands in the renamed file"
        fresh = ticks(folder / f"{name}.log")
        assert fresh[0] == old[name][-1] + 1, "not a line lost in between"
    assert "SIGUSR1: reopened 2 log files" in master.stderr()


# --- orch logs ---------------------------------------------------------------------------
COUNT = command("""
    import time
    for i in range(1, 31):
        print("line", i, flush=True)
    time.sleep(1000)
""")


def test_orch_logs_prints_the_last_lines_with_prefixes_for_several(start_master):
    master = start_master(f"""
        [workers.a]
        command = {COUNT}
        [workers.b]
        command = {COUNT}
        [workers.c]
        command = "sleep 1000"
    """)
    master.wait_running(3)
    for name in ("a", "b"):
        wait_for(lambda: "line 30" in text_of(logs(master) / f"{name}.log"), message=f"{name}'s output")

    five = cli(master, "logs", "a", "-n", "5")
    assert five.returncode == 0, five.stderr
    assert five.stdout.splitlines() == [f"line {i}" for i in range(26, 31)]
    assert cli(master, "logs", "a").stdout.splitlines() == [f"line {i}" for i in range(11, 31)], "20 by default"

    both = cli(master, "logs", "a", "b", "-n", "2")
    assert both.returncode == 0, both.stderr
    assert both.stdout.splitlines() == ["a | line 29", "a | line 30", "b | line 29", "b | line 30"]
    glob = cli(master, "logs", "[ab]", "-n", "1")
    assert glob.stdout.splitlines() == ["a | line 30", "b | line 30"]

    silent = cli(master, "logs", "c")  # running, but has printed nothing yet: no file so far
    assert silent.returncode == 0 and silent.stdout == "", silent
    missing = cli(master, "logs", "zzz")
    assert missing.returncode == 1 and "no log matches 'zzz'" in missing.stderr


class LineReader:
    """Lines of a pipe, read by a thread, so a test can wait for them with a timeout."""

    def __init__(self, stream):
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate, timeout: float = 5.0, message: str = "a line") -> list[str]:
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {message}; got {self.seen[-10:]}")
            try:
                self.seen.append(self.lines.get(timeout=left))
            except queue.Empty:
                pass
        return self.seen


SPLIT_AND_TICK = command("""
    import os, sys, time
    while not os.path.exists("go"):
        time.sleep(0.01)
    print("part one,", end=" ", flush=True)
    time.sleep(0.6)
    print("part two", flush=True)
    for i in range(100000):
        print(f"tick {i} " + "y" * 40, flush=True)
        time.sleep(0.01)
""")


def test_orch_logs_follow_starts_before_the_first_line_and_survives_rotations(start_master):
    master = start_master(f"""
        [workers.f]
        command = {SPLIT_AND_TICK}
        log_max_size = "1KiB"
        log_backups = 1
    """)
    master.wait_running(1)
    path = logs(master) / "f.log"
    follow = subprocess.Popen([PY, "-m", "orchestrator", "logs", "f", "-f", "-n", "5", "-c", str(master.config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        reader = LineReader(follow.stdout)
        time.sleep(0.3)  # the follower is up before the instance's first output (and its file)
        assert not path.exists() and follow.poll() is None, follow.stderr.read() if follow.poll() else ""
        (master.folder / "go").write_text("")
        seen = reader.until(lambda s: sum(x.startswith("tick ") for x in s) >= 150, timeout=8,
                            message="ticks through several rotations")
        assert "part one, part two" in seen, "a line written in two pieces is printed whole"
        numbers = [int(x.split()[1]) for x in seen if x.startswith("tick ")]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), \
            "no line lost or repeated while the file rotated under the follower"
        assert numbers[0] == 0 and all(x.startswith(("tick ", "part one")) for x in seen), seen[:5]
        assert (logs(master) / "f.log.1").exists() and follow.poll() is None
    finally:
        follow.kill()
        follow.wait(5)


# --- the foreground echo ------------------------------------------------------------------
ECHO_FLEET = f"""
[workers.echo]
command = {command('import time; print("hello from echo", flush=True); time.sleep(1000)')}
[workers.other]
command = {command('import time; print("hello from other", flush=True); time.sleep(1000)')}
"""
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} orch (INFO|WARNING|ERROR) ")


@pytest.fixture
def foreground(tmp_path):
    """Factory: run `orch up` with stdout on a file or a pty; kills the whole tree afterwards."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, stdout, env: dict[str, str | None] | None = None) -> subprocess.Popen:
        config = tmp_path / "workers.toml"
        config.write_text(ECHO_FLEET)
        environ = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        proc = subprocess.Popen([PY, "-m", "orchestrator", "up", "-c", str(config), *args], cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=open(tmp_path / "master.err", "wb"), env=environ, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        proc.kill()
        proc.wait(10)
        for child in tree:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def check_stderr(tmp_path: Path) -> None:
    text = (tmp_path / "master.err").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert any("echo[" in line and "started" in line for line in lines), text
    assert all(STAMP.match(line) for line in lines), text


@pytest.mark.parametrize("no_color", [None, "1"])
def test_foreground_echo_to_a_file_is_plain_and_prefixed(foreground, tmp_path, no_color):
    out = tmp_path / "stdout.txt"
    with open(out, "wb") as stdout:
        proc = foreground(stdout=stdout, env={"NO_COLOR": no_color})
    wait_for(lambda: "hello from echo" in text_of(out) and "hello from other" in text_of(out),
             message="both instances' lines on stdout")
    stop(proc)
    text = out.read_text()
    assert "\x1b[" not in text
    assert re.search(r"^echo\s+\| hello from echo$", text, re.M), text
    assert re.search(r"^other\s+\| hello from other$", text, re.M), text
    assert "started" not in text and "orch INFO" not in text, "the master's own lines go to stderr"
    check_stderr(tmp_path)


def read_pty(fd: int, until: str, timeout: float = 5.0) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while until.encode() not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {until!r} on the pty; got {data!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                data += os.read(fd, 65536)
            except OSError:
                break
    return data.decode(errors="replace")


@pytest.mark.parametrize("no_color", [None, "1"])
def test_foreground_echo_on_a_terminal_is_coloured_unless_no_color(foreground, tmp_path, no_color):
    parent, child = pty.openpty()
    try:
        proc = foreground(stdout=child, env={"NO_COLOR": no_color})
        os.close(child)
        child = -1
        text = read_pty(parent, "hello from other")
        text += read_pty(parent, "hello from echo") if "hello from echo" not in text else ""
        stop(proc)
    finally:
        if child >= 0:
            os.close(child)
        os.close(parent)
    if no_color:
        assert "\x1b[" not in text, repr(text)
        assert re.search(r"echo\s+\| hello from echo", text), repr(text)
    else:
        assert re.search(r"\x1b\[\d+mecho\s+\|\x1b\[0m hello from echo", text), repr(text)
        assert re.search(r"\x1b\[\d+mother\s+\|\x1b\[0m hello from other", text), repr(text)
    check_stderr(tmp_path)


def test_foreground_quiet_prints_no_child_output(foreground, tmp_path):
    out = tmp_path / "stdout.txt"
    with open(out, "wb") as stdout:
        proc = foreground("--quiet", stdout=stdout)
    folder = Master.folder_of(tmp_path / "workers.toml") / "logs"
    wait_for(lambda: "hello from echo" in text_of(folder / "echo.log") and
             "hello from other" in text_of(folder / "other.log"), message="the instances' output in their logs")
    time.sleep(0.2)  # proving a negative: nothing reaches stdout
    stop(proc)
    assert out.read_text() == ""
    check_stderr(tmp_path)
