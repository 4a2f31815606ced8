"""Exports checked by the targets' own tools: real supervisord and honcho run the exported
files and every process's argv, environment and working directory equal `orch plan --json`;
systemd-analyze verifies every unit; kubernetes-validate --strict checks every document."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Callable

import psutil
import pytest
from conftest import ROOT, Master, orch, wait_for
from servers import free_port
from export_cases import config_text, planned, write

BIN = Path(sys.executable).parent
SHIPPED = sorted((ROOT / "configs").glob("*.toml"))


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    assert found, f"{name} is not installed (pip install -e '.[test]', scripts/test-deps)"
    return found


def _export(config: Path, fmt: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    result = orch("export", "--format", fmt, "-c", str(config), "-o", str(out), *extra, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def _proc_view(pid: int) -> tuple[list[str], dict[str, str], str] | None:
    """argv, environment and cwd of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        env = Path(f"/proc/{pid}/environ").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    argv = [a.decode() for a in raw.split(b"\0")[:-1]]
    pairs = (item.decode().partition("=") for item in env.split(b"\0") if item)
    return argv, {k: v for k, _, v in pairs}, cwd


def _matching(root: psutil.Process, expected: list[dict]) -> dict[str, int]:
    """Instance name -> pid of the runner's descendant that is exactly that instance."""
    views = {}
    for child in root.children(recursive=True):
        view = _proc_view(child.pid)
        if view is not None:
            views[child.pid] = view
    found = {}
    for spec in expected:
        # A Python worker retitles itself (setproctitle) once its argv has been parsed.
        titled = spec["argv"][1:3] == ["-m", "orchestrator.worker"]
        for pid, (argv, env, cwd) in views.items():
            same = argv == spec["argv"] or (titled and [a for a in argv if a] == [f"orch: {spec['name']}"])
            if same and cwd == spec["cwd"] and env.get("ORCH_INSTANCE") == spec["name"]:
                missing = {k: v for k, v in spec["env"].items() if env.get(k) != v}
                assert not missing, f"{spec['name']}: environment differs: {missing} vs {env}"
                found[spec["name"]] = pid
    return found


def _serves(port: int, count: int) -> Callable[[], None]:
    """A check that `count` different processes answer HTTP on 127.0.0.1:port."""
    def check() -> None:
        answered: set[str] = set()

        def get() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                    answered.add(reply.read().decode().split()[-1])  # "ok NAME PID"
            except OSError:
                pass
            return len(answered) >= count
        wait_for(get, timeout=20, interval=0.01, message=f"{count} processes answering on port {port}")
    return check


def _run_and_compare(cmd: list[str], cwd: Path, expected: list[dict],
                     check: Callable[[], None] | None = None) -> None:
    runner = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(cwd / "runner.err", "wb"))
    root = psutil.Process(runner.pid)
    seen: set[int] = set()
    found: dict[str, int] = {}
    try:
        def all_there() -> bool:
            assert runner.poll() is None, (cwd / "runner.err").read_text(errors="replace")[-3000:]
            found.update(_matching(root, expected))
            seen.update(found.values())
            return len(found) == len(expected)
        try:
            wait_for(all_there, timeout=60, interval=0.3)
        except AssertionError as exc:
            if "timed out" not in str(exc):
                raise
            missing = sorted({s["name"] for s in expected} - set(found))
            raise AssertionError(f"under {cmd[0]}, no process matches {missing}") from None
        if check is not None:
            check()
    finally:
        try:
            seen.update(p.pid for p in root.children(recursive=True))
        except psutil.NoSuchProcess:
            pass  # the runner already ended: the assertion above says why
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


def _supervisord(config: Path, tmp: Path, check: Callable[[], None] | None = None) -> None:
    expected = planned(config)
    _export(config, "supervisord", tmp / "out")
    (Master.folder_of(config) / "logs").mkdir(parents=True, exist_ok=True)
    main = tmp / "main.conf"
    main.write_text(f"[supervisord]\nnodaemon=true\nlogfile={tmp}/supervisord.log\n"
                    f"pidfile={tmp}/supervisord.pid\nchildlogdir={tmp}\n\n"
                    f"[include]\nfiles = {tmp}/out/supervisord.conf\n")
    _run_and_compare([_tool("supervisord"), "-c", str(main), "-n"], tmp, expected, check)


def _honcho(config: Path, tmp: Path, check: Callable[[], None] | None = None) -> None:
    expected = planned(config)
    _export(config, "procfile", tmp / "out")
    _run_and_compare([_tool("honcho"), "-f", str(tmp / "out" / "Procfile"), "start"], tmp, expected, check)


def test_supervisord_runs_the_quoting_config_byte_for_byte(tmp_path):
    _supervisord(write(tmp_path / "fleet", config_text()), tmp_path)


def test_honcho_runs_the_quoting_config_byte_for_byte(tmp_path):
    _honcho(write(tmp_path / "fleet", config_text()), tmp_path)


PYTHON_APP = """
import time
from orchestrator.worker import Worker

class Idle(Worker):
    def run(self):
        time.sleep(0.05)
        return False
"""


@pytest.mark.parametrize("runner", [_supervisord, _honcho], ids=["supervisord", "honcho"])
def test_python_workers_run_from_the_export(runner, tmp_path):
    config = write(tmp_path / "fleet", '[workers.py]\ntarget = "app:Idle"\nreplicas = 2\n'
                   'kwargs = { greeting = "it\'s 100% $HOME" }\n')
    (tmp_path / "fleet" / "app.py").write_text(PYTHON_APP)
    runner(config, tmp_path)


def _copy_shipped(path: Path, tmp: Path, redis_port: int | None = None) -> Path:
    """A shipped config copied into tmp (its runtime files must not land in the repository),
    with the `app` package its workers import, and its Redis on the test's own server: a
    worker that exited at once (no handler to import, no Redis to reach) made the runners
    stop the others before the test had seen them all."""
    # "f", not a longer name: the control socket's default path (.orch/<stem>/orch.sock) must
    # stay within the 107 bytes of a Unix socket path under pytest's numbered temp folders
    # (/tmp/pytest-of-root/pytest-1142/popen-gw3/<test name, 30 chars>0/ in a long-lived
    # machine's checkout: "fleet" made redis-queues.toml's 108).
    folder = tmp / "f"
    folder.mkdir()
    shutil.copytree(path.parent / "app", folder / "app")
    target = folder / path.name
    # A shipped demo's fixed port (web.toml's 8000) becomes a free one: a port another test
    # or a lingering process holds must not fail this one.
    text = path.read_text().replace("127.0.0.1:8000", f"127.0.0.1:{free_port()}")
    if redis_port is not None:
        text = text.replace("127.0.0.1:6379", f"127.0.0.1:{redis_port}").replace("port = 6379", f"port = {redis_port}")
    target.write_text(text)
    (folder / ".orch").mkdir()
    return target


def _web_check(config: Path) -> Callable[[], None] | None:
    """For a shipped config with a TCP socket: every instance that uses it must answer."""
    found = re.search(r'bind = "127\.0\.0\.1:(\d+)"', config.read_text())
    if not found:
        return None
    return _serves(int(found.group(1)), len([s for s in planned(config) if "--fd" in s["argv"]]))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_supervisord_and_honcho_run_every_shipped_config(path, tmp_path, redis_server):
    config = _copy_shipped(path, tmp_path, redis_server.port)
    (tmp_path / "s").mkdir()
    (tmp_path / "h").mkdir()
    _supervisord(config, tmp_path / "s", _web_check(config))
    _honcho(config, tmp_path / "h", _web_check(config))


def _verify_units(folder: Path) -> None:
    units = sorted(folder.iterdir())
    assert units
    result = subprocess.run([_tool("systemd-analyze"), "verify", "--recursive-errors=yes", "--man=no",
                             *[str(u) for u in units]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize("path", [None] + SHIPPED, ids=lambda p: p.name if p else "quoting")
def test_systemd_analyze_verifies_every_unit(path, tmp_path):
    config = write(tmp_path / "fleet", config_text(extra_env={"NL": "one\ntwo"},
                                                   extra_args=["new\nline", "${HOME}"])) \
        if path is None else _copy_shipped(path, tmp_path)
    _export(config, "systemd", tmp_path / "units")
    _verify_units(tmp_path / "units")


def test_systemd_analyze_is_strict_enough_to_fail(tmp_path):
    """The check above can fail: a unit with an unknown key or bad quoting is refused."""
    units = tmp_path / "units"
    units.mkdir()
    (units / "bad.service").write_text('[Service]\nExecStart=/bin/true "unbalanced\nRestrat=always\n')
    result = subprocess.run([_tool("systemd-analyze"), "verify", "--recursive-errors=yes", "--man=no",
                             str(units / "bad.service")], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 or result.stderr.strip()


def _kubernetes_validate(file: Path) -> str:
    result = subprocess.run([_tool("kubernetes-validate"), "--strict", str(file)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("path", [None] + SHIPPED, ids=lambda p: p.name if p else "quoting")
def test_kubernetes_validate_strict_passes_every_document(path, tmp_path):
    config = write(tmp_path / "fleet", config_text(extra_env={"NL": "one\ntwo"},
                                                   extra_args=["new\nline", "${HOME}"])) \
        if path is None else _copy_shipped(path, tmp_path)
    _export(config, "kubernetes", tmp_path / "k8s", "--image", "registry.example/app:1")
    report = _kubernetes_validate(tmp_path / "k8s" / "kubernetes.yaml")
    documents = (tmp_path / "k8s" / "kubernetes.yaml").read_text().count("\n---\n") + 1
    assert report.count("passed") == documents, report


def test_kubernetes_validate_is_strict_enough_to_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n"
                   "  replicas: 1\n  selector: {matchLabels: {a: b}}\n  template:\n"
                   "    metadata: {labels: {a: b}}\n    spec: {containers: [{name: x, image: y, comand: [z]}]}\n")
    result = subprocess.run([_tool("kubernetes-validate"), "--strict", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
