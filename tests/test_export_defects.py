"""Issue 23: the distribution's name in every install hint, `orch export -o` that cannot write
(one line, exit 2), and a supervisord export that real supervisord runs as it is."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, orch, wait_for

import orchestrator
from orchestrator.queues import beanstalkd, redis as redis_queue
from orchestrator.queues.base import ConsumerConfigError

DIST = "orch-fleet"  # free on the package index; `orch` and `orchestrator` are other projects
HINT = re.compile(r"pip install '?([A-Za-z0-9_.-]+)\[")


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def _config(folder: Path, command: str = "sleep 300") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "workers.toml"
    path.write_text(f'[orchestrator]\nname = "fleet"\nlog_dir = "logs"\n\n'
                    f'[workers.w]\ncommand = "{command}"\n')
    return path


def test_the_distribution_is_orch_fleet_and_installed_under_that_name():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DIST
    assert project["scripts"]["orch"] == "orchestrator.cli:main"
    assert importlib.metadata.version(DIST) == orchestrator.__version__


def test_every_install_hint_names_the_distribution():
    texts = {p: p.read_text() for p in [ROOT / "README.md", *(ROOT / "man").iterdir(),
                                        *(ROOT / "orchestrator").rglob("*.py")]}
    hints = {(p.name, m.group(1)) for p, text in texts.items()
             for m in HINT.finditer(text.replace("\\-", "-"))}
    assert {name for _, name in hints} - {"."} == {DIST}, hints
    assert {"redis.py", "beanstalkd.py", "README.md"} <= {file for file, _ in hints}
    assert f"{DIST}[redis]" in texts[ROOT / "man" / "orch.1"].replace("\\-", "-")


@pytest.mark.parametrize("module, opener, args", [
    (redis_queue, "open_redis", ("redis://127.0.0.1:1",)),
    (beanstalkd, "open_client", ("beanstalk://127.0.0.1:1", "t", 1.0)),
], ids=["redis", "beanstalkd"])
def test_a_missing_client_library_names_the_extra_to_install(module, opener, args, monkeypatch):
    monkeypatch.setattr(module, "redis_py" if module is redis_queue else "greenstalk", None)
    with pytest.raises(ConsumerConfigError, match=rf"pip install '{DIST}\["):
        getattr(module, opener)(*args)


@pytest.mark.parametrize("where", ["a file", "/proc/nope", "under a file", "a folder at the name"])
def test_export_to_where_it_cannot_write_is_one_line_and_exit_2(where, tmp_path):
    config = _config(tmp_path / "fleet")
    (tmp_path / "a file").write_text("keep me\n")
    (tmp_path / "a folder at the name" / "supervisord.conf").mkdir(parents=True)
    out = {"a file": tmp_path / "a file", "/proc/nope": Path("/proc/nope"),
           "under a file": tmp_path / "a file" / "sub",
           "a folder at the name": tmp_path / "a folder at the name"}[where]
    result = orch("export", "--format", "supervisord", "-c", str(config), "-o", str(out), timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"orch: export: -o {out}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "a file").read_text() == "keep me\n"
    assert not (tmp_path / "fleet" / "logs").exists()  # a failed export makes no log folder


def _supervisord_bin() -> str:
    found = shutil.which("supervisord") or str(Path(sys.executable).parent / "supervisord")
    assert os.access(found, os.X_OK), "supervisord is not installed (pip install -e '.[test]')"
    return found


@pytest.mark.parametrize("to_stdout", [False, True], ids=["-o", "stdout"])
def test_supervisord_runs_the_export_without_making_the_log_folder_first(to_stdout, tmp_path):
    config = _config(tmp_path / "fleet", "sh -c 'echo started; exec sleep 300'")
    log_dir = tmp_path / "fleet" / "logs"
    assert not log_dir.exists()
    args = ["export", "--format", "supervisord", "-c", str(config)]
    result = orch(*args, *([] if to_stdout else ["-o", str(tmp_path / "out")]), timeout=60)
    assert result.returncode == 0, result.stderr
    if to_stdout:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "supervisord.conf").write_text(result.stdout)
    main = tmp_path / "main.conf"
    main.write_text(f"[supervisord]\nnodaemon=true\nlogfile={tmp_path}/supervisord.log\n"
                    f"pidfile={tmp_path}/supervisord.pid\nchildlogdir={tmp_path}\n\n"
                    f"[include]\nfiles = {tmp_path}/out/supervisord.conf\n")
    runner = subprocess.Popen([_supervisord_bin(), "-c", str(main), "-n"], cwd=tmp_path,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "runner.err", "wb"))
    seen: set[int] = set()
    try:
        def running() -> bool:
            assert runner.poll() is None, (tmp_path / "runner.err").read_text(errors="replace")[-3000:]
            seen.update(p.pid for p in psutil.Process(runner.pid).children(recursive=True))
            log = log_dir / "w.log"
            return log.exists() and "started" in log.read_text()
        wait_for(running, timeout=30, interval=0.1, message="the exported program's log line")
        assert any(p.name() == "sleep" for p in psutil.Process(runner.pid).children())
    finally:
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(timeout=10)
        for pid in seen:  # supervisord puts each program in its own process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
