"""Real rq and celery workers on a real redis-server: stops and limits reach the whole
tree (rq's work-horse leaves the worker's process group), and kill_mode = "mixed" lets
celery finish the task in flight."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import alive, orch, wait_for

pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting

PY = sys.executable
BIN = Path(PY).parent

RQ_JOBS = """
import os, time
def long(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(1000)
def grow(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    block = bytearray(200 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    time.sleep(1000)
"""

CELERY_APP = """
import os, time
from celery import Celery
app = Celery("tasks", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = False
@app.task
def slow(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3)
    return "done"
"""


def program(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'", pytrace=False)
    return path


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def rq_master(start_master, tmp_path: Path, redis_url: str, extra: str = ""):
    (tmp_path / "rqjobs.py").write_text(RQ_JOBS)
    return start_master(f"""
        [orchestrator]
        check_interval = "100ms"
        [workers.rq]
        command = {json.dumps([program("rq"), "worker", "--url", redis_url, "--path", str(tmp_path),
                               "--with-scheduler", "default"])}
        {extra}
    """)


def enqueue(redis_url: str, func: str, *args: str) -> None:
    from redis import Redis
    from rq import Queue
    Queue("default", connection=Redis.from_url(redis_url)).enqueue(func, *args, job_timeout=3600)


@pytest.mark.parametrize("kill_mode", ["group", "mixed"])
def test_orch_stop_ends_rqs_work_horse_that_left_the_process_group(start_master, tmp_path, redis_server,
                                                                      kill_mode):
    # group: SIGTERM reaches the horse at once, long before stop_timeout; mixed: the worker
    # waits for its horse (warm shutdown) until stop_timeout, then SIGKILL reaches the tree.
    timeout = {"group": "10s", "mixed": "1s"}[kill_mode]
    master = rq_master(start_master, tmp_path, redis_server.url,
                       f'kill_mode = "{kill_mode}"\nstop_timeout = "{timeout}"')
    worker = master.wait_running(1, timeout=20)["rq"]
    enqueue(redis_server.url, "rqjobs.long", str(tmp_path / "horse.pid"))
    horse = wait_for(lambda: read_pid(tmp_path / "horse.pid"), 20, message="the work-horse")
    try:
        assert os.getpgid(horse) == horse != worker, "the horse leads a process group of its own"
        row = wait_for(lambda: (r := master.status()["rq"])["processes"] >= 2 and r, 5,
                       message="the horse counted in status")
        assert row["rss"] > 20 * 2**20
        began = time.monotonic()
        result = orch("stop", "rq", "-c", str(master.config))
        assert result.returncode == 0, result.stderr
        assert not alive(horse) and not alive(worker), "orch stop returned with the tree still alive"
        took = time.monotonic() - began
        row = master.status()["rq"]
        assert row["state"] == "stopped"
        if kill_mode == "group":
            assert took < 5 and row["last_exit"] != "SIGKILL", (took, row)
        else:
            assert 1 <= took < 5 and row["last_exit"] == "SIGKILL", (took, row)
    finally:
        if alive(horse):
            os.kill(horse, signal.SIGKILL)


def test_a_hard_memory_limit_kills_rqs_growing_work_horse(start_master, tmp_path, redis_server):
    master = rq_master(start_master, tmp_path, redis_server.url,
                       'memory = { hard = "150MiB" }\nmin_uptime = "0s"\nstop_timeout = "1s"')
    worker = master.wait_running(1, timeout=20)["rq"]
    enqueue(redis_server.url, "rqjobs.grow", str(tmp_path / "horse.pid"))
    horse = wait_for(lambda: read_pid(tmp_path / "horse.pid"), 20, message="the work-horse")
    try:
        row = wait_for(lambda: (r := master.status()["rq"])["reason"] == "memory_hard" and r, 10,
                       message="the hard limit to act")
        wait_for(lambda: not alive(horse) and not alive(worker), 5, message="worker and horse gone")
        assert row["limit_kills"] == {"memory_hard": 1}
        master.wait_running(1, timeout=20)
    finally:
        if alive(horse):
            os.kill(horse, signal.SIGKILL)


def _celery_master(start_master, tmp_path: Path, broker: str, extra: str = ""):
    """A real celery prefork worker (2 children) under orch, ready for tasks."""
    (tmp_path / "celerytasks.py").write_text(CELERY_APP)
    master = start_master(f"""
        [workers.celery]
        command = {json.dumps([program("celery"), "-A", "celerytasks", "worker", "--pool", "prefork",
                               "--concurrency", "2", "--loglevel", "INFO", "--without-gossip",
                               "--without-mingle", "--without-heartbeat"])}
        env = {{ BROKER = "{broker}", PYTHONPATH = "{tmp_path}" }}
        stop_timeout = "10s"
        {extra}
    """)
    master.wait_running(1, timeout=20)
    wait_for(lambda: "ready." in (master.log_dir / "celery.log").read_text(errors="replace")
             if (master.log_dir / "celery.log").exists() else False, 30, message="celery ready")
    return master


@contextlib.contextmanager
def _celery_client(tmp_path: Path, broker: str) -> Iterator[Any]:
    """The test's own import of the celery app, to send tasks; undone afterwards."""
    sys.path.insert(0, str(tmp_path))
    os.environ["BROKER"] = broker
    try:
        import celerytasks
        yield celerytasks
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("celerytasks", None)
        os.environ.pop("BROKER", None)


def test_kill_mode_mixed_lets_celery_finish_the_task_in_flight(start_master, tmp_path, redis_server):
    master = _celery_master(start_master, tmp_path, redis_server.url, 'kill_mode = "mixed"')
    with _celery_client(tmp_path, redis_server.url) as celerytasks:
        result = celerytasks.slow.delay(str(tmp_path / "task.pid"))
        child = wait_for(lambda: read_pid(tmp_path / "task.pid"), 20, message="the task to start")
        assert master.status()["celery"]["processes"] >= 3, "main process and two pool children"
        stopped = orch("stop", "celery", "-c", str(master.config), timeout=30)
        assert stopped.returncode == 0, stopped.stderr
        assert result.get(timeout=10) == "done" and result.state == "SUCCESS"
        assert not alive(child)


def test_kill_mode_group_aborts_celerys_task_in_flight(start_master, tmp_path, redis_server):
    """The contrast that makes "mixed" worth having: the stop signal to every process kills
    the prefork child at once."""
    master = _celery_master(start_master, tmp_path, redis_server.url)
    with _celery_client(tmp_path, redis_server.url) as celerytasks:
        result = celerytasks.slow.delay(str(tmp_path / "task.pid"))
        wait_for(lambda: read_pid(tmp_path / "task.pid"), 20, message="the task to start")
        assert orch("stop", "celery", "-c", str(master.config), timeout=30).returncode == 0
        time.sleep(3.5)
        assert result.state != "SUCCESS"
