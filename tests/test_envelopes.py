"""One malformed task message must not take a queue down (issue 22): the envelope checks as a
table, then real fleets on a real redis-server and beanstalkd fed the messages that used to
crash-loop every worker (max_attempts 1e400, result_ttl -1 or 1e300, JSON 100,000 deep, ...):
each is dead-lettered with its reason on the first attempt, the task behind it still runs,
the worker keeps its pid, and an ack the server refuses never runs a body past max_attempts."""

from __future__ import annotations

import json

import pytest
import redis

from conftest import text_of, wait_for
from orchestrator.queues.base import original_bytes
from orchestrator.queues.safe_json import too_deep
from orchestrator.tasks.envelope import DEFAULT_TTL, BadEnvelope, Envelope, parse_envelope
from test_tasks import events, setup, starts

DEEP = 100_000


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def envelope(job_id: str, **fields: object) -> bytes:
    """A hand-made envelope of jobs.stamp (logs a "start" event with its tag when it runs)."""
    data = {"id": job_id, "task": "jobs.stamp", "kwargs": {"tag": f"ran-{job_id}"}, **fields}
    return json.dumps(data, separators=(",", ":")).encode()


def deep_body(depth: int) -> bytes:
    head = b'{"id":"deep","task":"jobs.stamp","kwargs":{"tag":"ran-deep","x":'
    return head + b"[" * depth + b"]" * depth + b"}}"


# name: (body, what the dead letter's reason says); each used to crash-loop the workers or be
# retried as if a retry could fix it. The first is the issue's 70-odd-byte message.
BAD = {
    "attempts-1e400": (envelope("a1e400").replace(b"}}", b'},"max_attempts":1e400}'),
                       "the number 1e400 does not fit a 64-bit float"),
    "ttl-negative": (envelope("ttlneg", result_ttl=-1), "'result_ttl' must be seconds from 1 to 2592000"),
    "ttl-1e300": (envelope("ttl1e300", result_ttl=1e300), "'result_ttl' must be seconds"),
    "deep": (deep_body(DEEP), "JSON nested deeper than 100 levels"),
    "array": (b'["jobs.stamp", {"tag": "ran-array"}]', "a task envelope is a JSON object, not an array"),
    "number": (b"42", "a task envelope is a JSON object, not a number"),
    "not-utf8": (b'\xff\xfe{"id":"x"}', "not UTF-8"),
    "attempts-text": (envelope("atext", max_attempts="3"), "'max_attempts' must be a whole number from 1 to 1000"),
    "kwargs-array": (envelope("kwlist").replace(b'{"tag":"ran-kwlist"}', b'["ran-kwlist"]'),
                     "'kwargs' must be an object, not an array"),
    "timeout-text": (envelope("ttext", timeout="30s"), "'timeout' must be seconds from 0.001"),
}


@pytest.mark.parametrize("body, reason", [
    *BAD.values(),
    (envelope("a0", max_attempts=0), "'max_attempts' must be a whole number from 1 to 1000, not 0"),
    (envelope("a1001", max_attempts=1001), "not 1001"),
    (envelope("a25", max_attempts=2.5), "not 2.5"),
    (envelope("atrue", max_attempts=True), "not True"),
    (envelope("anull", max_attempts=None), "not None"),
    (envelope("ttl0", result_ttl=0), "'result_ttl' must be seconds"),
    (envelope("ttl-half", result_ttl=0.5), "'result_ttl' must be seconds"),
    (envelope("ttl-year", result_ttl=365 * 86400), "'result_ttl' must be seconds"),
    (envelope("ttl-text", result_ttl="1d"), "'result_ttl' must be seconds"),
    (envelope("t0", timeout=0), "'timeout' must be seconds from 0.001 to 604800 or null, not 0"),
    (envelope("tneg", timeout=-1), "'timeout' must be seconds"),
    (envelope("tbig", timeout=1e9), "'timeout' must be seconds"),
    (envelope("tbool", timeout=True), "'timeout' must be seconds"),
    (envelope("nan").replace(b"}}", b'},"timeout":NaN}'), "NaN is not JSON"),
    (envelope("inf").replace(b"}}", b'},"timeout":-Infinity}'), "-Infinity is not JSON"),
    (deep_body(99), "JSON nested deeper than 100 levels"),
    (b'{"id":"x"', "not JSON"),
    (b"", "not JSON"),
    (b"null", "not null"),
    (b'"task"', "not a string"),
    (b'{"task":"t","kwargs":{}}', "'id' must be 1-200 printable characters, not None"),
    (b'{"id":5,"task":"t","kwargs":{}}', "'id' must be 1-200 printable characters, not 5"),
    (b'{"id":"","task":"t","kwargs":{}}', "'id' must be"),
    (b'{"id":"a\\u0000b","task":"t","kwargs":{}}', "'id' must be"),
    (b'{"id":"\\ud800","task":"t","kwargs":{}}', "'id' must be"),
    (json.dumps({"id": "x" * 201, "task": "t", "kwargs": {}}).encode(), "'id' must be"),
    (b'{"id":"x","task":["t"],"kwargs":{}}', "'task' must be 1-1000 printable characters"),
    (b'{"id":"x","task":"t"}', "'kwargs' must be an object, not null"),
    (b'{"id":"x","task":"t","kwargs":"a=1"}', "'kwargs' must be an object, not a string"),
    (b'{"id":"x","task":"t","kwargs":{},"max_attempts":1' + b"0" * 5000 + b"}", "not JSON"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_parse_envelope_refuses_with_the_reason(body, reason):
    with pytest.raises(BadEnvelope) as caught:
        parse_envelope(body)
    assert reason in str(caught.value)
    assert len(str(caught.value)) < 300  # fits a dead letter and a log line


def test_parse_envelope_takes_what_a_producer_sends_and_fills_defaults():
    sent = Envelope("job1", "app.jobs.f", {"a": [1, {"b": None}], "c": "\u00e9"}, 3, 0.5, 3600.0)
    assert parse_envelope(sent.encode()) == sent
    bare = parse_envelope(b'{"id":"j","task":"t","kwargs":{},"put_at":"whenever","extra":1}')
    assert (bare.max_attempts, bare.timeout, bare.result_ttl) == (1, None, DEFAULT_TTL)
    edges = parse_envelope(envelope("e", max_attempts=1000, timeout=604800, result_ttl=1))
    assert (edges.max_attempts, edges.timeout, edges.result_ttl, edges.ttl_ms) == (1000, 604800.0, 1.0, 1000)
    inner = parse_envelope(deep_body(98)).kwargs["x"]  # 100 levels with the envelope: allowed
    for _ in range(97):
        inner = inner[0]
    assert inner == []


@pytest.mark.parametrize("text, limit, deep", [
    (b"[]", 1, False),
    (b"[[]]", 1, True),
    (b"[[],[],[]]", 2, False),                  # many brackets, two levels
    (b'["[[[[[[", "{{{{"]', 1, False),          # brackets inside strings are not nesting
    (b'["\\"[[[[", 1]', 1, False),               # nor after an escaped quote
    (b'{"a":{"b":{"c":1}}}', 3, False),
    (b'{"a":{"b":{"c":{}}}}', 3, True),
    (b"[" * DEEP, 100, True),                     # unbalanced still counts
    (b"1" * 1000, 0, False),
])
def test_too_deep_counts_nesting_outside_strings(text, limit, deep):
    assert too_deep(text, limit) is deep


def test_put_and_task_refuse_what_a_worker_would_dead_letter():
    from orchestrator.tasks import TaskQueue
    queue = TaskQueue("redis://127.0.0.1:1/0")  # never reached: the checks come first
    with pytest.raises(ValueError, match="'max_attempts' must be a whole number from 1 to 1000"):
        queue.task("work", max_attempts=1001)
    with pytest.raises(ValueError, match="'timeout' must be seconds"):
        queue.task("work", timeout="30d")
    for ttl in (0.5, "60d"):
        with pytest.raises(ValueError, match="'result_ttl' must be seconds"):
            TaskQueue("redis://127.0.0.1:1/0", result_ttl=ttl)
    task = queue.task("work", name="t")(lambda **kw: None)
    nested: list = []
    for _ in range(150):
        nested = [nested]
    with pytest.raises(TypeError, match="argument 'x' nests deeper than 98 levels"):
        task.put(x=nested)
    for _ in range(2000):
        nested = [nested]
    with pytest.raises(TypeError, match="argument 'x' cannot travel as JSON"):
        task.put(x=nested)  # json.dumps' RecursionError, not out of put()


def worker_row(master) -> dict:
    return master.status()["tasks-work"]


def test_malformed_envelopes_are_dead_lettered_at_once_and_the_worker_lives(start_master, redis_server,
                                                                            tmp_path):
    master = start_master(setup(tmp_path, redis_server.url))
    pid = master.wait_running(1, timeout=20)["tasks-work"]
    client = redis.Redis.from_url(redis_server.url)
    for body, _ in BAD.values():
        client.lpush("tasks:work", body)
    from orchestrator.tasks import Job, TaskFailed, TaskQueue
    producer = TaskQueue(redis_server.url)
    stamp = producer.task("work", name="jobs.stamp")(lambda tag: None)
    assert isinstance(stamp.put(tag="good").result(timeout=15), float)  # queued behind them all
    wait_for(lambda: client.llen("tasks:work:dead") == len(BAD), 5, message="every bad body dead")
    records = {original_bytes(r): json.loads(r) for r in client.lrange("tasks:work:dead", 0, -1)}
    for name, (body, reason) in BAD.items():
        record = records[body]
        assert record["attempts"] == 1, (name, record)
        assert record["error"].startswith("Fatal: not a valid task envelope: ") and reason in record["error"], name
    assert [t for _, _, _, t in events(tmp_path) if t.startswith("ran-")] == []  # no bad body ran
    # A malformed envelope whose id is usable tells its producer why, instead of a wait forever
    with pytest.raises(TaskFailed, match="'result_ttl' must be seconds"):
        Job(producer, "jobs.stamp", "ttlneg").result(timeout=5)
    assert 86000 < client.ttl("tasks:result:ttlneg") <= 86400  # kept for the default TTL
    row = worker_row(master)
    assert (row["pid"], row["restarts"]) == (pid, 0), row
    assert client.hlen("tasks:work:attempts") == 0 and client.llen("tasks:work") == 0


def test_an_ack_the_server_refuses_is_a_failed_attempt_never_a_fourth_run(start_master, redis_server,
                                                                         tmp_path):
    master = start_master(setup(tmp_path, redis_server.url))  # the worker allows 50 deaths
    pid = master.wait_running(1, timeout=20)["tasks-work"]
    client = redis.Redis.from_url(redis_server.url)
    client.rpush("tasks:result:refused", "a list")  # every store of this job's result: WRONGTYPE
    client.lpush("tasks:work", envelope("refused", max_attempts=3))
    wait_for(lambda: client.llen("tasks:work:dead") == 1, 10, message="dead after its 3 attempts")
    record = json.loads(client.lindex("tasks:work:dead", 0))
    assert record["attempts"] == 3 and "acknowledging failed: ResponseError: WRONGTYPE" in record["error"]
    from orchestrator.tasks import TaskQueue
    stamp = TaskQueue(redis_server.url).task("work", name="jobs.stamp")(lambda tag: None)
    stamp.put(tag="after").result(timeout=10)  # the queue still works, and nothing runs it again
    assert len(starts(tmp_path, "ran-refused")) == 3
    row = worker_row(master)
    assert (row["pid"], row["restarts"]) == (pid, 0), row
    # The master writes a chatty pipe to its file on a 50 ms timer: poll for the lines.
    wait_for(lambda: all(line in text_of(master.log_dir / "tasks-work.log")
                         for line in ("counted as a failed attempt", "the server refused a step")),
             5, message="both lines in the worker's log")


BEANSTALK_BAD = ["attempts-1e400", "ttl-negative", "ttl-1e300", "array", "not-utf8"]
BEANSTALK_DEEP = deep_body(30_000)  # beanstalkd refuses jobs over 64 KiB; still 30x json's limit


def test_malformed_envelopes_on_beanstalkd_are_buried_on_their_first_reserve(
        start_master, beanstalkd_server, redis_server, tmp_path):
    from orchestrator.queues.beanstalkd import open_client
    from orchestrator.tasks import Job, TaskFailed, TaskQueue
    url = beanstalkd_server.url
    master = start_master(setup(tmp_path, url, redis_server.url))
    pid = master.wait_running(1, timeout=20)["tasks-work"]
    client = open_client(url, "work", 5)
    try:
        ids = {name: client.put(BAD[name][0], ttr=60) for name in BEANSTALK_BAD}
        ids["deep"] = client.put(BEANSTALK_DEEP, ttr=60)
        producer = TaskQueue(url, result_url=redis_server.url)
        stamp = producer.task("work", name="jobs.stamp")(lambda tag: None)
        assert isinstance(stamp.put(tag="good").result(timeout=15), float)
        wait_for(lambda: client.stats_tube("work")["current-jobs-buried"] == len(ids), 5,
                 message="every bad job buried")
        for name, job_id in ids.items():
            stats = client.stats_job(job_id)
            assert (stats["state"], stats["reserves"]) == ("buried", 1), (name, stats)
    finally:
        client.close()
    expected = [f"after 1 attempts: Fatal: not a valid task envelope: {BAD[name][1]}"
                for name in [*BEANSTALK_BAD, "deep"]]
    # The master writes a chatty pipe to its file on a 50 ms timer: poll for the lines.
    wait_for(lambda: all(line in text_of(master.log_dir / "tasks-work.log") for line in expected), 5,
             message="every burial in the worker's log")
    with pytest.raises(TaskFailed, match="'result_ttl' must be seconds"):
        Job(producer, "jobs.stamp", "ttl1e300").result(timeout=5)
    assert [t for _, _, _, t in events(tmp_path) if t.startswith("ran-")] == []
    row = worker_row(master)
    assert (row["pid"], row["restarts"]) == (pid, 0), row
