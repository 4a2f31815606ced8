"""The task API (orchestrator.tasks) against a real redis-server / beanstalkd and real `orch up`
fleets: results across interpreters, exactly one result per job under SIGKILLs, retries with
growing delays then dead letters with the traceback, `orch queues retry`, delays, unknown
task names, JSON checks at put(), task timeouts, and the beanstalkd backend."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from conftest import orch, text_of, wait_for
from queue_support import chaos, redis_leftovers

pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting

JOBS = '''
import os, time
from orchestrator.tasks import TaskQueue
HERE = os.path.dirname(os.path.abspath(__file__))
queue = TaskQueue({url!r}, result_url={result_url!r})

def _event(kind, text):
    line = "%s %d %.6f %s\\n" % (kind, os.getpid(), time.time(), text)
    fd = os.open(os.path.join(HERE, "events.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)

@queue.task("work", max_attempts=50)
def square(n, sleep=0.0):
    _event("start", "square-%s" % n)
    time.sleep(sleep)
    return {{"n": n, "square": n * n}}

@queue.task("work", max_attempts=3)
def broken(n):
    _event("start", "broken-%s" % n)
    raise ValueError("broken %s" % n)

@queue.task("work")
def stamp(tag):
    _event("start", tag)
    return time.time()

@queue.task("work", max_attempts=2, timeout="0.5s")
def slow(n):
    _event("start", "slow-%s" % n)
    time.sleep(30)
'''


def setup(tmp_path: Path, url: str, result_url: str | None = None, *, replicas: int = 1,
          extra_kwargs: str = "") -> str:
    """Write jobs.py and return the workers.toml text of a task fleet on queue `work`."""
    (tmp_path / "jobs.py").write_text(JOBS.format(url=url, result_url=result_url))
    result = f', result_url = "{result_url}"' if result_url else ""
    return f"""
    [orchestrator]
    check_interval = "0.2s"
    [workers.tasks]
    target = "orchestrator.tasks:TaskWorker"
    matrix = {{ queue = ["work"] }}
    replicas = {replicas}
    preload = true
    backoff = {{ initial = "0.05s", max = "0.5s" }}
    min_uptime = "0s"
    stop_timeout = "2s"
    kwargs = {{ url = "{url}", queues = ["{{{{ queue }}}}"], imports = ["jobs"], retry_delay = 0.2, max_attempts = 50{result}{extra_kwargs} }}
    """


def python(tmp_path: Path, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with tmp_path (jobs.py) importable."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, timeout=timeout,
                          capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})


def events(tmp_path: Path) -> list[tuple[str, int, float, str]]:
    rows = []
    for line in text_of(tmp_path / "events.log").splitlines():
        kind, pid, when, text = line.split(" ", 3)
        rows.append((kind, int(pid), float(when), text))
    return rows


def starts(tmp_path: Path, text: str) -> list[float]:
    return [when for kind, _, when, t in events(tmp_path) if kind == "start" and t == text]


def test_a_producer_in_another_interpreter_awaits_the_fleets_result(start_master, redis_server, tmp_path):
    master = start_master(setup(tmp_path, redis_server.url))
    master.wait_running(1, timeout=20)
    done = python(tmp_path, """
        import jobs
        assert jobs.square(n=3) == {"n": 3, "square": 9}          # still a plain call
        job = jobs.square.put(n=7)
        print(job.id)
        print(job.result(timeout=20)["square"])
        print(jobs.square.map([{"n": i} for i in range(5)], timeout=20))
    """)
    assert done.returncode == 0, done.stderr
    job_id, value, mapped = done.stdout.splitlines()
    assert value == "49"
    assert mapped == str([{"n": i, "square": i * i} for i in range(5)])
    sys.path.insert(0, str(tmp_path))  # this interpreter too reads the result by job id
    try:
        from orchestrator.tasks import Job, TaskQueue
        assert Job(TaskQueue(redis_server.url), "jobs.square", job_id).result(timeout=5)["square"] == 49
    finally:
        sys.path.remove(str(tmp_path))
    ttl = redis.Redis.from_url(redis_server.url).ttl(f"tasks:result:{job_id}")
    assert 86000 < ttl <= 86400  # kept one day by default


PRODUCER = """
import sys, jobs
start, count = int(sys.argv[1]), int(sys.argv[2])
with open("ids-%d.txt" % start, "w") as out:
    for n in range(start, start + count):
        out.write("%s %d\\n" % (jobs.square.put(n=n, sleep=0.002).id, n))
        out.flush()
"""


def test_every_result_stored_exactly_once_while_workers_are_sigkilled(start_master, redis_server, tmp_path):
    master = start_master(setup(tmp_path, redis_server.url, replicas=3))
    master.wait_running(3, timeout=30)
    client = redis.Redis.from_url(redis_server.url)
    per_producer = 1000
    producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, str(start), str(per_producer)], cwd=tmp_path,
                                  env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
                 for start in (0, per_producer)]
    try:
        def stored() -> int:
            return sum(1 for k in client.scan_iter("tasks:result:*", count=1000) if not k.endswith(b":ready"))
        kills = chaos(master, lambda: stored() >= 2 * per_producer, zygotes=True, seed=11, batches=[],
                      seconds=40)
        assert [p.wait(30) for p in producers] == [0, 0]
    finally:
        for p in producers:
            p.kill()
    wait_for(lambda: stored() >= 2 * per_producer, 60, interval=0.3, message="every result stored")
    ids = dict(line.split() for f in tmp_path.glob("ids-*.txt") for line in f.read_text().splitlines())
    assert len(ids) == 2 * per_producer
    assert stored() == 2 * per_producer  # one result key per job, none extra
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.get(f"tasks:result:{job_id}")
    records = dict(zip(ids, pipe.execute()))
    for job_id, n in ids.items():
        assert json.loads(records[job_id]) == {"ok": True, "value": {"n": int(n), "square": int(n) ** 2}}
    runs = [t for k, _, _, t in events(tmp_path) if k == "start" and t.startswith("square-")]
    assert kills >= 20, kills
    assert len(set(runs)) == 2 * per_producer  # ran at least once each (some twice: at least once)
    assert client.llen("tasks:work:dead") == 0
    wait_for(lambda: not redis_leftovers(client, ["tasks:work"]), 10, message="empty processing lists")


def test_failing_task_backs_off_then_is_dead_lettered_with_traceback_and_retry_brings_it_back(
        start_master, redis_server, tmp_path):
    master = start_master(setup(tmp_path, redis_server.url))
    master.wait_running(1, timeout=20)
    done = python(tmp_path, """
        import jobs
        from orchestrator.tasks import TaskFailed
        try:
            jobs.broken.put(n=1).result(timeout=30)
        except TaskFailed as exc:
            print(exc)
    """)
    assert done.returncode == 0, done.stderr
    assert "ValueError: broken 1" in done.stdout and "jobs.py" in done.stdout and "Traceback" in done.stdout
    times = starts(tmp_path, "broken-1")
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.2 <= gaps[0] < gaps[1], gaps  # 0.2 s, then 0.4 s (doubling)
    client = redis.Redis.from_url(redis_server.url)
    record = json.loads(client.lindex("tasks:work:dead", 0))  # pushed in the dead result's MULTI
    assert record["attempts"] == 3 and "Traceback" in record["error"] and "broken 1" in record["error"]
    shown = orch("queues", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)[0]
    assert (row["queue"], row["backend"], row["dead"]) == ("work", "tasks", 1)
    retried = orch("queues", "retry", "work", cwd=tmp_path)
    assert retried.returncode == 0 and "moved 1" in retried.stdout, retried.stdout + retried.stderr
    wait_for(lambda: len(starts(tmp_path, "broken-1")) == 6, 20, message="three more attempts after retry")
    wait_for(lambda: client.llen("tasks:work:dead") == 1, 10, message="dead-lettered again")


def test_delayed_task_starts_after_2s_and_within_2_5s(start_master, redis_server, tmp_path):
    master = start_master(setup(tmp_path, redis_server.url))
    master.wait_running(1, timeout=20)
    sys.path.insert(0, str(tmp_path))
    try:
        import jobs
        put_at = time.time()
        job = jobs.stamp.put(tag="later", delay="2s")
        started = job.result(timeout=15)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("jobs", None)
    assert 2.0 <= started - put_at < 2.5, started - put_at


def test_unknown_task_is_dead_lettered_at_once(start_master, redis_server, tmp_path):
    master = start_master(setup(tmp_path, redis_server.url))
    master.wait_running(1, timeout=20)
    from orchestrator.tasks import TaskFailed, TaskQueue
    producer = TaskQueue(redis_server.url)
    ghost = producer.task("work", name="elsewhere.ghost")(lambda: None)
    with pytest.raises(TaskFailed, match="unknown task 'elsewhere.ghost'"):
        ghost.put().result(timeout=15)
    client = redis.Redis.from_url(redis_server.url)
    record = json.loads(client.lindex("tasks:work:dead", 0))
    assert record["attempts"] == 1 and "unknown task" in record["error"]


def test_task_over_its_timeout_is_a_failed_attempt(start_master, redis_server, tmp_path):
    master = start_master(setup(tmp_path, redis_server.url))
    master.wait_running(1, timeout=20)
    done = python(tmp_path, """
        import jobs
        from orchestrator.tasks import TaskFailed
        try:
            jobs.slow.put(n=1).result(timeout=30)
        except TaskFailed as exc:
            print(exc)
    """)
    assert "TaskTimeout" in done.stdout, done.stdout + done.stderr
    assert len(starts(tmp_path, "slow-1")) == 2


def test_put_refuses_arguments_json_cannot_carry_naming_them(tmp_path):
    from orchestrator.tasks import TaskQueue
    queue = TaskQueue("redis://127.0.0.1:1/0")  # never reached: the check comes first
    task = queue.task("work", name="t")(lambda **kw: None)
    with pytest.raises(TypeError, match="argument 'when'.*JSON"):
        task.put(ok=1, when=object())
    with pytest.raises(TypeError, match="argument 'pair' would not arrive unchanged"):
        task.put(pair=(1, 2))
    with pytest.raises(TypeError, match="argument 'x'"):
        task.put(x=float("nan"))


def test_beanstalkd_backend_with_results_in_redis(start_master, beanstalkd_server, redis_server, tmp_path):
    url = f"beanstalk://127.0.0.1:{beanstalkd_server.port}"
    master = start_master(setup(tmp_path, url, redis_server.url))
    master.wait_running(1, timeout=20)
    done = python(tmp_path, """
        import jobs
        from orchestrator.tasks import TaskFailed
        print(jobs.square.put(n=12).result(timeout=20)["square"])
        try:
            jobs.broken.put(n=2).result(timeout=30)
        except TaskFailed as exc:
            print("failed", "ValueError: broken 2" in str(exc))
    """)
    assert done.stdout.split() == ["144", "failed", "True"], done.stdout + done.stderr
    assert len(starts(tmp_path, "broken-2")) == 3
    shown = json.loads(orch("queues", "--json", cwd=tmp_path).stdout)[0]
    assert shown["dead"] == 1
    assert "moved 1" in orch("queues", "retry", "work", cwd=tmp_path).stdout
    wait_for(lambda: len(starts(tmp_path, "broken-2")) >= 4, 20, message="run again after the kick")


def test_beanstalkd_without_result_url_is_a_clear_error(start_master, beanstalkd_server, tmp_path):
    url = f"beanstalk://127.0.0.1:{beanstalkd_server.port}"
    master = start_master(setup(tmp_path, url), wait=False)
    log = master.log_dir / "tasks-work.log"
    wait_for(lambda: "kwargs.result_url is required" in text_of(log), 20, message="the error in the log")
    from orchestrator.tasks import TaskQueue
    task = TaskQueue(url).task("work", name="t")(lambda: None)
    with pytest.raises(ValueError, match="result_url"):
        task.put().result(timeout=1)


def test_configs_tasks_toml_runs_a_small_fleet(start_master, redis_server, tmp_path):
    import shutil
    from conftest import ROOT
    shutil.copytree(ROOT / "configs" / "app", tmp_path / "app")
    text = (ROOT / "configs" / "tasks.toml").read_text()
    master = start_master(text.replace("redis://127.0.0.1:6379/0", redis_server.url))
    master.wait_running(4, timeout=30)
    done = subprocess.run([sys.executable, "-c", "from app.jobs import add, report\n"
                           "print(add.put(a=2, b=3).result(timeout=20), report.put(name='r', rows=10).result(timeout=20)['rows'])"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "TASKS_URL": redis_server.url})
    assert done.stdout.split() == ["5", "10"], done.stdout + done.stderr
    shown = orch("queues", "--json", cwd=tmp_path)
    rows = {r["queue"]: r for r in json.loads(shown.stdout)}
    assert rows["default"]["consumers"] == 2 and rows["reports"]["consumers"] == 2
