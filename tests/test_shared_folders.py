"""Files in shared folders are not trusted (issue 22): with real `orch up` masters, a folder
another user can write is refused, links planted at the master's file paths are never
written through, and a state file this user did not write makes nobody get killed.

Tests run as root; uid 65534 (nobody) stands in for the other user."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import Master, alive, orch, text_of, wait_for
from orchestrator.procfs import start_time

NOBODY = 65534
WORKER = '[workers.w]\ncommand = "sleep 1000"\n'


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def refused_up(config: Path, *args: str) -> subprocess.CompletedProcess:
    """`orch up` expected to give up at once; whatever it started is killed either way."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-c", str(config), "--quiet", *args],
                            cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        kill_masters_of(config)  # one that wrongly started, detached into a session of its own
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_masters_of(config: Path) -> None:
    for master in psutil.process_iter(["cmdline"]):
        if str(config) in " ".join(master.info["cmdline"] or ()):
            try:
                family = [master, *master.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in family:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # guard and instances lead their own groups
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- folders another user can write --------------------------------------------------------
@pytest.mark.parametrize("key, value, mode, owner, args", [
    ("pidfile", "shared/orch.pid", 0o777, 0, ()),
    ("pidfile", "shared/orch.pid", 0o755, NOBODY, ()),
    ("log_dir", "shared", 0o775, 0, ()),
    ("control_socket", "shared/orch.sock", 0o1777, 0, ()),  # sticky is no excuse
    ("pidfile", "shared/orch.pid", 0o777, 0, ("--detach",)),
])
def test_a_folder_another_user_can_write_is_refused_in_one_line(start_master, tmp_path, key, value, mode,
                                                                 owner, args):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, owner, owner)
    shared.chmod(mode)
    text = f'[orchestrator]\n{key} = "{value}"\n{WORKER}'
    config = tmp_path / "workers.toml"
    config.write_text(text)

    result = refused_up(config, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result
    assert len(lines) == 1, result.stderr
    assert f"orchestrator.{key}" in lines[0] and f"folder {shared} " in lines[0], lines[0]
    assert list(shared.iterdir()) == [], "nothing may be written there"

    # The same layout once only root can write the folder: the refusal was about that alone.
    os.chown(shared, 0, 0)
    shared.chmod(0o755)
    master = start_master(text, wait=False)  # its socket may be in `shared`: ask as a client would
    wait_for(lambda: master.proc.poll() is None and orch("status", "-c", str(config)).returncode == 0, 20,
             message="the master to answer")


def test_folders_orch_creates_are_private_even_under_umask_002(start_master, tmp_path):
    old = os.umask(0o002)  # the master inherits it: Path.mkdir(parents=True) gave 0775 here
    try:
        master = start_master(f'[orchestrator]\nlog_dir = "var/orch/logs"\n'
                              '[workers.w]\ncommand = ["sh", "-c", "echo hello; exec sleep 1000"]\n')
    finally:
        os.umask(old)
    master.wait_running(1)
    for folder in (".orch", ".orch/workers", "var", "var/orch", "var/orch/logs"):
        assert mode_of(tmp_path / folder) == 0o750, folder
    wait_for(lambda: "hello" in text_of(tmp_path / "var/orch/logs/w.log"), message="the log line")
    state_file = master.pidfile.with_name("orch.pid.state")
    state = wait_for(lambda: state_file.exists() and state_file, message="the state file")
    assert mode_of(state) == 0o600 and os.lstat(state).st_uid == os.geteuid()
    assert mode_of(master.pidfile) & 0o022 == 0
    assert mode_of(tmp_path / "var/orch/logs/w.log") & 0o022 == 0


# --- links planted at the master's own file paths ------------------------------------------
def plant(kind: str, at: Path, victim: Path) -> None:
    if kind == "symlink":
        at.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, at)
    else:
        os.mkfifo(at)  # opening it for writing must not hang the master either


@pytest.mark.parametrize("name, kind, args", [
    ("orch.pid", "symlink", ()),
    ("orch.pid", "hardlink", ()),
    ("orch.pid", "fifo", ()),
    ("master.log", "symlink", ("--detach",)),
])
def test_a_link_at_the_pidfile_or_master_log_is_refused_and_its_target_untouched(tmp_path, name, kind, args):
    """Refused rather than replaced: the pidfile is the lock, and a link there may be how its
    owner shares one, so orch does not decide to delete it; the message says to."""
    config = tmp_path / "workers.toml"
    config.write_text(WORKER)
    (tmp_path / ".orch").mkdir(mode=0o700)
    Master.folder_of(config).mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    at = Master.folder_of(config) / name
    plant(kind, at, victim)

    result = refused_up(config, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result
    assert len(lines) == 1 and str(at) in lines[0], result.stderr
    assert victim.read_text() == "precious\n"
    assert os.path.lexists(at), "a refused file is left for its owner to remove"


CHATTY = json.dumps([sys.executable, "-c", (
    "import time\n"
    "for i in range(40):\n"
    "    print(f'line {i:02d} ' + 'x' * 90, flush=True)\n"
    "    time.sleep(0.02)\n"  # separate reads, so the master rotates more than once
    "time.sleep(1000)\n")])


def test_links_at_log_paths_are_replaced_never_written_through(start_master, tmp_path):
    """Replaced rather than refused: an instance's log opens at its first output, long after
    start-up, and refusing it would silently drop that output."""
    logs = Master.folder_of(tmp_path / "workers.toml") / "logs"
    for folder in (logs.parent.parent, logs.parent, logs):
        folder.mkdir(mode=0o700)
    victims = {name: tmp_path / f"victim-{name}" for name in ("w.log", "w.log.1")}
    for name, victim in victims.items():
        victim.write_text(f"precious {name}\n")
        (logs / name).symlink_to(victim)
    master = start_master(f"""
        [orchestrator]
        log_max_size = "1KiB"
        log_backups = 2
        [workers.w]
        command = {CHATTY}
    """)
    master.wait_running(1)

    def everything_logged() -> bool:
        files = [logs / n for n in ("w.log", "w.log.1", "w.log.2") if os.path.lexists(logs / n)]
        plain = [f for f in files if not f.is_symlink()]
        return "line 39" in "".join(text_of(f) for f in plain) and os.path.lexists(logs / "w.log.1")
    wait_for(everything_logged, 15, message="all 40 lines, rotated")
    for name, victim in victims.items():
        assert victim.read_text() == f"precious {name}\n", name
    assert not (logs / "w.log").is_symlink() and not (logs / "w.log.1").is_symlink()
    wait_for(lambda: f"log file {logs / 'w.log'} was a link" in master.stderr(), message="the warning")


# --- a state file this user did not write ----------------------------------------------------
@pytest.fixture
def bystander():
    """A live process that is not orch's: what a forged state file would have root kill."""
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("forged, why", [
    ("nobody", f"owned by uid {NOBODY}, not by this master's user"),
    ("others-writable", "writable by group or others (mode 0666)"),
    ("symlink", "symbolic link"),
    ("trusted", None),  # the same record written by this user: the sweep does kill it
])
def test_a_state_file_this_user_did_not_write_kills_nothing(start_master, tmp_path, bystander, forged, why):
    folder = Master.folder_of(tmp_path / "workers.toml")
    folder.parent.mkdir(mode=0o700)
    folder.mkdir(mode=0o700)
    record = {"master": 999999, "run": "forged", "run_start": 0,
              "groups": [[bystander.pid, start_time(bystander.pid)]]}
    state = folder / "orch.pid.state"
    written = tmp_path / "elsewhere.json" if forged == "symlink" else state
    written.write_text(json.dumps(record))
    written.chmod(0o666 if forged == "others-writable" else 0o600)
    if forged == "nobody":
        os.chown(written, NOBODY, NOBODY)
    if forged == "symlink":
        state.symlink_to(written)

    master = start_master(WORKER)  # answering: the start-up sweep is over
    master.wait_running(1)
    if why is None:
        wait_for(lambda: not alive(bystander.pid), message="the recorded group to be killed")
        assert f"ending pid {bystander.pid}" in master.stderr()
        # The bystander is this test's child: a zombie until reaped, yet it has ended (the
        # sweep waited its whole 5 s for it, and a loaded machine's master answered too late).
        assert "did not end within" not in master.stderr()
        return
    assert alive(bystander.pid)
    wait_for(lambda: f"ignoring the state file {state}" in master.stderr(), message="the warning")
    assert why in master.stderr() and "nothing it names is signalled" in master.stderr()
    # The master's own state file replaces the forged one, this user's and private.
    wait_for(lambda: not state.is_symlink() and os.lstat(state).st_uid == os.geteuid()
             and mode_of(state) == 0o600, message="the master's own state file")
