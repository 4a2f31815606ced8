"""Issue 26, deployable as root: `user`/`group`/`groups`, `env_file`, `rlimits`, `umask` and
`stderr`, with real masters run as root (as CI is) and an unprivileged user made for the run."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import orch, text_of, wait_for
from orchestrator.config.production import parse_rlimits
from orchestrator.expand.envfile import EnvFileError, parse_env

# One user per xdist worker: the module's tests may run in several workers at once, and a
# shared name let one worker's useradd meet another's ("user 'orchtest' already exists").
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
USER, GROUP = f"orchtest{_WORKER}", f"orchtestx{_WORKER}"
SECRET = "s3cr3t-Value-9f2c"


# --- pure: the env file format and the rlimits table ----------------------------------------

pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


@pytest.mark.parametrize("text, expected", [
    ("A=1\nB = two words  \n", [("A", "1"), ("B", "two words")]),
    ("# comment\n; also\n\nexport C=3\n", [("C", "3")]),
    ("D='$HOME \\n'\n", [("D", "$HOME \\n")]),
    ('E="a\\"b\\\\c\\nd $X"\n', [("E", 'a"b\\c\nd $X')]),
    ('F="line1\nline2"\nG=after\n', [("F", "line1\nline2"), ("G", "after")]),
    ("H=x # not a comment\n", [("H", "x # not a comment")]),
    ("A=1\nA=2\n", [("A", "1"), ("A", "2")]),
])
def test_env_file_format(text, expected):
    assert parse_env(text) == expected


@pytest.mark.parametrize("text", ["NOEQUALS\n", "1X=2\n", "Q='open\n", 'R="x" trailing\n'])
def test_env_file_errors_name_the_line_never_the_value(text):
    with pytest.raises(EnvFileError) as info:
        parse_env(text, "f.env")
    assert str(info.value).startswith("f.env:") and "trailing" not in str(info.value).split(":", 2)[2]


def test_rlimits_table():
    assert parse_rlimits({"nofile": 4096, "core": "unlimited", "stack": ["8MiB", "16MiB"]}) == {
        "nofile": (4096, 4096), "core": (-1, -1), "stack": (8 << 20, 16 << 20)}
    for bad in ({"cores": 1}, {"nofile": "4KiB"}, {"nofile": [10, 5]}, {"nofile": -1}):
        with pytest.raises(ValueError):
            parse_rlimits(bad)


# --- a real unprivileged user ---------------------------------------------------------------

@pytest.fixture(scope="module")
def test_user(tmp_path_factory):
    # CI runs as root, and scripts/test-deps installs useradd: never a skip, a clear failure.
    assert os.geteuid() == 0, "the user-switching tests need root (CI runs them as root)"
    assert shutil.which("useradd"), "useradd is missing: sh scripts/test-deps installs it (passwd)"
    base = Path(tempfile.mkdtemp(prefix="orch-user-"))  # pytest's folders are root's alone
    base.chmod(0o755)
    subprocess.run(["groupadd", "-f", GROUP], check=True)
    subprocess.run(["userdel", "-r", USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-d", str(base / USER), "-s", "/bin/sh", "-G", GROUP, USER], check=True)
    yield pwd.getpwnam(USER), base
    subprocess.run(["userdel", "-r", USER], capture_output=True)
    subprocess.run(["groupdel", GROUP], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def _status_ids(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.split() for k, v in (line.split(":", 1) for line in lines)}


def test_a_worker_runs_as_the_user_with_its_home_and_cannot_regain_root(start_master, test_user):
    test_user, base = test_user
    secret_file = base / "root-only"
    secret_file.write_text("private\n")
    secret_file.chmod(0o600)
    work = Path(test_user.pw_dir)
    script = (f"touch {work}/made; echo HOME=$HOME USER=$USER; cat {secret_file} || echo cannot-read; "
              "umask; i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done; echo done; exec sleep 60")
    master = start_master(f"""
        [workers.w]
        command = ["sh", "-c", {script!r}]
        user = "{USER}"
        umask = "027"
        cwd = "{work}"
    """.replace("'", '"'))
    pid = master.wait_running(1)["w"]
    log = master.log_dir / "w.log"
    wait_for(lambda: "done" in text_of(log), message="the whole output")
    text = text_of(log)
    assert f"HOME={test_user.pw_dir} USER={USER}" in text
    assert "cannot-read" in text and "private" not in text
    assert "0027" in text
    assert all(f"line-{i}\n" in text for i in range(200))  # the master-opened log is complete
    assert (work / "made").stat().st_uid == test_user.pw_uid
    ids = _status_ids(pid)
    assert ids["Uid"] == [str(test_user.pw_uid)] * 4  # real, effective, saved, filesystem
    assert ids["Gid"] == [str(test_user.pw_gid)] * 4
    import grp
    assert sorted(ids["Groups"]) == sorted({str(test_user.pw_gid), str(grp.getgrnam(GROUP).gr_gid)})
    assert int(ids["CapEff"][0], 16) == 0 and int(ids["CapPrm"][0], 16) == 0  # nothing to regain root with
    status = orch("status", "-c", str(master.config))
    assert USER in status.stdout and "USER" in status.stdout


def test_a_non_root_master_asked_for_another_user_fails_with_one_located_line(test_user):
    assert shutil.which("setpriv"), "setpriv is missing: sh scripts/test-deps installs it (util-linux)"
    tmp_path = test_user[1]
    config = tmp_path / "workers.toml"
    config.write_text(f'[workers.w]\ncommand = "sleep 1"\nuser = "{USER}"\n')
    config.chmod(0o644)
    # The test's interpreter may sit under /root: run the system one on the same sources.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    python = shutil.which("python3", path="/usr/bin:/usr/local/bin") or sys.executable
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "env",
                             f"PYTHONPATH={Path(__file__).parent.parent}:{site}", python, "-m",
                             "orchestrator", "check", "-c", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "ModuleNotFoundError" not in result.stderr and "Permission denied" not in result.stderr, \
        f"no Python that user nobody can run here (a system python3 is needed): {result.stderr[-200:]}"
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{config}:3: workers.w.user:" in lines[0] and "not root" in lines[0]


def _check_as_root(config: Path, python: str) -> subprocess.CompletedProcess:
    """`orch check` run by `python` (any path to an interpreter) on this checkout's sources."""
    site = next(p for p in sys.path if p.endswith("site-packages"))
    return subprocess.run([python, "-m", "orchestrator", "check", "-c", str(config)], capture_output=True,
                          text=True, timeout=60, cwd=config.parent,
                          env={**os.environ, "PYTHONPATH": f"{Path(__file__).parent.parent}:{site}"})


def test_check_names_a_program_or_interpreter_the_user_cannot_run(test_user):
    base = test_user[1]
    locked = Path(tempfile.mkdtemp(prefix="orch-locked-"))  # mode 0700, root's: like /root
    try:
        os.symlink(os.path.realpath(sys.executable), locked / "python")
        os.symlink("/bin/sh", locked / "sh")
        script = base / "tool"
        script.write_text(f"#!{locked}/sh\nexec sleep 1\n")
        script.chmod(0o755)
        config = base / "workers.toml"
        cases = [  # (the template's first lines, the key at fault, the path named, run by)
            (f'target = "app:Idle"', "target", f"{locked}/python", f"{locked}/python"),
            (f'command = "{locked}/sh -c true"', "command", f"{locked}/sh", sys.executable),
            (f'command = "{script}"', "command", f"{locked}/sh", sys.executable)]
        for first, key, path, python in cases:
            config.write_text(f'[workers.w]\n{first}\nuser = "{USER}"\n')
            result = _check_as_root(config, python)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1, (first, result.stderr)
            assert f"{config}:2: workers.w.{key}: user {USER} cannot execute {path}" in lines[0], lines
            assert f"{locked} (mode 0700, owner root) is not searchable" in lines[0]
        locked.chmod(0o755)  # the user reaches both now (the worker's Python may still sit under /root)
        for first, _, _, python in cases[1:]:
            config.write_text(f'[workers.w]\n{first}\nuser = "{USER}"\n')
            assert _check_as_root(config, python).returncode == 0, first
    finally:
        shutil.rmtree(locked, ignore_errors=True)


# --- env files ------------------------------------------------------------------------------

def test_env_file_change_restarts_only_its_users_and_no_output_shows_a_secret(start_master, tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "q1.env").write_text(f"# a comment\nexport TOKEN='{SECRET}'\n")
    (tmp_path / "secrets" / "q2.env").write_text("TOKEN=other\n")
    master = start_master("""
        [workers.c]
        command = "sleep 60"
        matrix = { queue = ["q1", "q2"] }
        env_file = ["-defaults.env", "secrets/{{ queue }}.env"]
        env = { FROM_ENV = "wins" }
        [workers.plain]
        command = "sleep 60"
    """)
    before = master.wait_running(3)
    environ = Path(f"/proc/{before['c-q1']}/environ").read_bytes().split(b"\0")
    assert f"TOKEN={SECRET}".encode() in environ and b"FROM_ENV=wins" in environ
    outputs = [master.stderr()]
    for args in (("status",), ("status", "--json"), ("plan", "--json"), ("plan",), ("check",), ("diff",)):
        result = orch(*args, "-c", str(master.config))
        outputs += [result.stdout, result.stderr]
    (tmp_path / "secrets" / "q1.env").write_text(f"TOKEN='{SECRET}-2'\n")
    wait_for(lambda: master.pids().get("c-q1") not in (None, before["c-q1"]), 15,
             message="c-q1 restarted for its env file")
    after = master.wait_running(3)
    assert after["c-q2"] == before["c-q2"] and after["plain"] == before["plain"]
    # a missing optional file appearing is a change too
    (tmp_path / "defaults.env").write_text("SHARED=1\n")
    wait_for(lambda: master.pids().get("c-q2") not in (None, before["c-q2"]), 15,
             message="c-q2 restarted for the new defaults.env")
    assert master.wait_running(3)["plain"] == before["plain"]
    (tmp_path / "secrets" / "q1.env").write_text("BROKEN LINE\n")  # refused: names the line only
    wait_for(lambda: "q1.env:1" in (master.call("status").get("last_reload_error") or ""), 15,
             message="the reload refused")
    for args in (("status",), ("status", "--json"), ("check",)):
        result = orch(*args, "-c", str(master.config))
        outputs += [result.stdout, result.stderr]
    outputs.append(master.stderr())
    outputs += [p.read_text(errors="replace") for p in master.log_dir.glob("*")]
    assert not [o for o in outputs if SECRET in o]


def test_a_missing_plain_env_file_is_a_located_error_and_a_dash_one_is_fine(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[workers.w]\ncommand = "sleep 1"\nenv_file = ["-optional.env", "needed.env"]\n')
    result = orch("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}:3: workers.w.env_file: {tmp_path}/needed.env: no such file" in result.stderr
    (tmp_path / "needed.env").write_text("A=1\n")
    assert orch("check", "-c", str(config)).returncode == 0


# --- rlimits --------------------------------------------------------------------------------

def _nofile(pid: int) -> tuple[str, str]:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open files"))
    return line.split()[3], line.split()[4]


def test_rlimits_nofile_for_a_plain_command_and_a_preloaded_worker(start_master, tmp_path):
    (tmp_path / "app.py").write_text(
        "import time\nfrom orchestrator.worker import Worker\n"
        "class W(Worker):\n    def run(self):\n        time.sleep(0.2)\n        return False\n")
    master = start_master("""
        [workers.cmd]
        command = "sleep 60"
        rlimits = { nofile = 4321 }
        [workers.py]
        target = "app:W"
        preload = true
        rlimits = { nofile = [1234, 5678] }
        [workers.other]
        target = "app:W"
        preload = true
    """)
    pids = master.wait_running(3, timeout=20)
    assert _nofile(pids["cmd"]) == ("4321", "4321")
    assert _nofile(pids["py"]) == ("1234", "5678")
    assert _nofile(pids["other"]) != ("1234", "5678")  # a zygote of its own


# --- stderr ---------------------------------------------------------------------------------

def test_stderr_separate_splits_rotates_and_follows(start_master, tmp_path):
    # in bursts: a log rotates between writes, and one read of the whole output is one write
    script = ("i=0; while [ $i -lt 400 ]; do echo out-$i-xxxxxxxxxxxxxxxxxxxxxxxx; "
              "echo err-$i-yyyyyyyyyyyyyyyyyyyyyyyy >&2; i=$((i+1)); "
              "[ $((i % 20)) -eq 0 ] && sleep 0.05; done; exec sleep 60")
    master = start_master(f"""
        [workers.s]
        command = ["sh", "-c", "{script}"]
        stderr = "separate"
        log_max_size = 2000
        log_backups = 40
        [workers.d]
        command = ["sh", "-c", "echo kept; echo dropped >&2; exec sleep 60"]
        stderr = "discard"
    """)
    master.wait_running(2)
    out, err = master.log_dir / "s.log", master.log_dir / "s.stderr.log"

    def everything(path: Path) -> str:
        return "".join(text_of(p) for p in sorted(path.parent.glob(path.name + "*")))
    wait_for(lambda: "err-399-" in everything(err) and "out-399-" in everything(out), 10, message="all output")
    assert "err-" not in everything(out) and "out-" not in everything(err)
    assert (master.log_dir / "s.log.1").exists() and (master.log_dir / "s.stderr.log.1").exists()
    wait_for(lambda: "kept" in text_of(master.log_dir / "d.log"))
    assert "dropped" not in "".join(text_of(p) for p in master.log_dir.glob("d*"))
    follow = subprocess.Popen([sys.executable, "-m", "orchestrator", "logs", "-c", str(master.config),
                               "s", "--stderr", "-f", "-n", "3"], stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follow.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(seen) >= 3, message="the last lines of the stderr log")
        assert all(line.startswith("err-") for line in seen[:3])
        master.call("restart", patterns=["s"])  # the new run rotates both files again
        wait_for(lambda: sum("err-399-" in line for line in seen) >= 2, 20,
                 message="orch logs -f --stderr across rotations")
        assert not [line for line in seen if "out-" in line]
    finally:
        follow.kill()
        follow.wait()
    plain = orch("logs", "-c", str(master.config), "s", "-n", "2")
    assert "out-399-" in plain.stdout and "err-" not in plain.stdout
