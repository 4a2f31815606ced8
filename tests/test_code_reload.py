"""`orch reload --code` (issue 30): preloaded workers get the code on disk now by rolling onto
a fresh zygote, with nothing lost on the queue; an import error moves nothing and says where.
Real masters, a real redis-server, real preloaded queue consumers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from conftest import orch, text_of, wait_for
from queue_support import Events, consumer_config

pytestmark = pytest.mark.slow  # a real redis-server and 8 preloaded consumers

# A user module preloaded in the zygote: the consumer class and its handler live in it, so a
# worker reports the VERSION its zygote imported (a restart alone would keep the old one).
APP = '''
import os, time
from orchestrator.queues.redis import QueueConsumer
VERSION = "{version}"
LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "events.log")

def handle(m):
    time.sleep(0.002)
    line = "done %d %.6f %s@%s\\n" % (os.getpid(), time.time(), m.decode(), VERSION)
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)

class Consumer(QueueConsumer):
    pass
'''


def _config(url: str) -> str:
    return consumer_config("app:Consumer", "queue", ["qa", "qb"], f'url = "{url}", queue = "{{{{ queue }}}}"',
                           replicas=4, kwargs=", retry_delay = 0.1", stop_timeout="5s",
                           extra='max_unavailable = 2\nmin_uptime = "0.3s"').replace(
                               'handler = "handlers:handle"', 'handler = "app:handle"').replace(
                               'min_uptime = "0s"\n', '')


def _zygotes(master) -> list[int]:
    found = []
    for proc in master.descendants():
        try:
            if "orch: zygote" in " ".join(proc.cmdline()) and proc.status() != "zombie":
                found.append(proc.pid)
        except Exception:  # noqa: BLE001 - gone meanwhile
            pass
    return found


def _versions(events: Events) -> dict[str, set[str]]:
    """message -> the versions that handled it."""
    seen: dict[str, set[str]] = {}
    for kind, _, _, text in events.all():
        message, _, version = text.rpartition("@")
        seen.setdefault(message, set()).add(version)
    return seen


def test_reload_code_rolls_preloaded_consumers_onto_new_code_losing_nothing(start_master, redis_server, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP.format(version="v1"))
    events = Events(tmp_path / "events.log")
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(_config(redis_server.url))
    old = master.wait_running(8, timeout=30)
    # A worker just forked carries the zygote's title until it sets its own: poll.
    first = wait_for(lambda: len(z := _zygotes(master)) == 1 and z, 5, message="one zygote")

    sent: list[str] = []

    def send(count: int) -> None:
        batch = [f"m{len(sent) + i}" for i in range(count)]
        sent.extend(batch)
        client.lpush("qa", *batch[::2])
        client.lpush("qb", *batch[1::2])

    send(200)
    wait_for(lambda: len(events.all()) >= 50, 20, message="the consumers at work")
    app.write_text(APP.format(version="v2"))
    # The command returns once every instance is ready on the new code; load all the while.
    reload = subprocess.Popen([sys.executable, "-m", "orchestrator", "reload", "--code", "template:consumer",
                               "-c", str(master.config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while reload.poll() is None:
            send(20)
            time.sleep(0.05)  # the pace of the load (20 messages per 50 ms), not a wait for a condition
            assert len(sent) < 20000, "the roll never finished"
        out, err = reload.communicate(timeout=10)
    finally:
        reload.kill()
    assert reload.returncode == 0, err
    assert "8 running instances of 8 rolled onto it" in out, out
    rows = master.status()
    assert all(r["pid"] not in old.values() and r["state"] == "running" for r in rows.values()), rows
    send(200)
    wait_for(lambda: set(sent) <= set(_versions(events)), 60, interval=0.2, message="every message handled")
    assert set(master.pids().values()).isdisjoint(old.values())
    late = sent[-200:]
    assert all(_versions(events)[m] == {"v2"} for m in late), "a worker kept the old code"
    assert "v1" in set().union(*(_versions(events)[m] for m in sent[:50]))
    assert client.llen("qa:dead") == client.llen("qb:dead") == 0
    wait_for(lambda: len(z := _zygotes(master)) == 1 and z != first, 10, message="the old zygote gone with its last worker")


def test_an_import_error_rolls_nothing_and_says_where(start_master, tmp_path):
    app = tmp_path / "app.py"
    app.write_text("from orchestrator.worker import Worker\nimport time\n\nclass W(Worker):\n"
                   "    def run(self):\n        time.sleep(0.05)\n")
    master = start_master("""
        [workers.w]
        target = "app:W"
        preload = true
        replicas = 3
        min_uptime = "2s"  # a process that dies at start is never taken for ready
    """)
    before = master.wait_running(3, timeout=20)
    app.write_text("from orchestrator.worker import Worker\nimport time\n\nLIMIT = undefined_name + 1\n")
    result = orch("reload", "--code", "-c", str(master.config), timeout=60)
    assert result.returncode == 2, result
    assert f"{app}:4: NameError: name 'undefined_name' is not defined" in result.stderr, result.stderr
    assert "every instance keeps its code" in result.stderr
    assert master.pids() == before, "an instance moved despite the import error"
    wait_for(lambda: len(_zygotes(master)) == 1, 5, message="the failed zygote gone, the old one kept")
    # A restart now still forks from the old zygote: the old code keeps running.
    master.call("restart", patterns=["w"], wait=True, timeout=10)
    assert master.status()["w"]["state"] == "running"
    before = master.pids()
    # Code that imports but dies at start: the roll halts at its first batch, the command says
    # so (exit 1), and the rest keep their old process.
    app.write_text("from orchestrator.worker import Worker\n\nclass W(Worker):\n"
                   "    def init(self):\n        raise SystemExit(7)\n")
    result = orch("reload", "--code", "template:w", "--timeout", "30", "-c", str(master.config), timeout=60)
    assert result.returncode == 1 and "w died before it was ready (exit 7)" in result.stderr, result
    assert "new processes fork from the old code again" in result.stderr
    kept = {n: pid for n, pid in master.pids().items() if pid == before[n]}
    assert len(kept) == 2, (before, master.pids())
    # The halted roll sends new processes back to the old zygote: the one that died comes
    # back on the old code, and stays up.
    failed = next(n for n in before if n not in kept)
    wait_for(lambda: master.status()[failed]["state"] == "running" and master.status()[failed]["ready"], 20,
             message="the failed instance back on the old code")
    assert "the roll halted; new processes fork from the old code again" in master.stderr()
    assert master.pids() == {**kept, failed: master.pids()[failed]}


WORKER = '''import time
from orchestrator.worker import Worker
VERSION = "{version}"

class W(Worker):
    def init(self):
        print("code", VERSION, flush=True)

    def run(self):
        time.sleep(0.05)
'''


def test_code_watch_rolls_the_template_on_save_and_only_it(start_master, tmp_path):
    package = tmp_path / "app" / "sub"
    package.mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "work.py").write_text(WORKER.format(version="one"))
    master = start_master("""
        [workers.w]
        target = "app.sub.work:W"
        preload = true
        replicas = 2
        min_uptime = "0.2s"
        max_unavailable = 2
        code_watch = ["app/**/*.py"]
        [workers.other]
        command = "sleep 1000"
    """)
    before = master.wait_running(3, timeout=20)
    # Same size, same mtime: a .pyc the first import might have written would pass for current.
    stamp = (package / "work.py").stat().st_mtime
    (package / "work.py").write_text(WORKER.format(version="two"))
    os.utime(package / "work.py", (stamp, stamp))
    wait_for(lambda: all("code two" in text_of(master.log_dir / f"{n}.log") for n in ("w", "w-1")), 20,
             message="both instances on the new code")
    after = master.pids()
    assert after["other"] == before["other"], "a template without code_watch restarted"
    assert after["w"] != before["w"] and after["w-1"] != before["w-1"]
    assert master.stderr().count("new zygotes importing") == 1, "the new code's .pyc files started another reload"
    # An import error on save moves nothing and is logged with its place.
    (package / "work.py").write_text("import time\nVERSION = 'three'\nraise ValueError('broken on purpose')\n")
    wait_for(lambda: "reload --code (code_watch of template:w) refused" in master.stderr(), 20,
             message="the refusal")
    assert f"{package / 'work.py'}:3: ValueError: broken on purpose" in master.stderr()
    assert master.pids() == after
