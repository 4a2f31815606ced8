"""The Redis stream consumer (consumer groups) against a real redis-server and real masters."""

from __future__ import annotations

import pytest

import json
import os
import signal
import time

import psutil
import redis

from conftest import wait_for
from queue_support import Events, consumer_config, batches_of, chaos, write_handlers, started_at

TARGET = "orchestrator.queues.redis_stream:StreamConsumer"


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def config(url: str, streams: list[str], *, replicas: int = 1, preload: bool = True, kwargs: str = "",
           stop_timeout: str = "2s") -> str:
    if "retry_delay" not in kwargs:
        kwargs += ", retry_delay = 0.1"
    return consumer_config(TARGET, "stream", streams, f'url = "{url}", stream = "{{{{ stream }}}}", group = "workers"',
                           replicas=replicas, preload=preload, kwargs=kwargs, stop_timeout=stop_timeout)


def add(client: redis.Redis, stream: str, messages: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for m in messages:
        pipe.xadd(stream, {"data": m})
    pipe.execute()


def pending(client: redis.Redis, stream: str) -> int:
    return client.xpending(stream, "workers")["pending"]


def test_nothing_lost_under_random_sigkills(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    streams = ["sa", "sb"]
    expected = {f"{s}-{i}" for s in streams for i in range(1000)}
    master = start_master(config(redis_server.url, streams, replicas=2, kwargs=", max_attempts = 50"))
    master.wait_running(4, timeout=20)
    batches = [b for s in streams for b in batches_of(sorted(m for m in expected if m.startswith(s)), 15,
                                                        lambda part, s=s: add(client, s, part))]
    kills = chaos(master, lambda: expected <= events.done(), zygotes=True, seed=11, batches=batches)
    wait_for(lambda: expected <= events.done(), 40, interval=0.2, message="every message handled")
    missing = expected - events.done()
    assert not missing, f"{len(missing)} never handled after {kills} kills, e.g. {sorted(missing)[:5]}"
    assert kills >= 30
    wait_for(lambda: pending(client, "sa") == pending(client, "sb") == 0, 15,
             message="no pending entries left")
    assert client.llen("sa:dead") == client.llen("sb:dead") == 0


def test_killed_mid_entry_is_handled_again_within_1s_of_the_replacement(start_master, redis_server,
                                                                        tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(redis_server.url, ["sa"]))
    old = master.wait_running(1)["consumer-sa"]
    add(client, "sa", ["hang:x"])
    wait_for(lambda: events.starts("hang:x"), 10, message="the handler to start")
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := master.pids().get("consumer-sa")) not in (None, old) and p, 10,
                   message="the replacement")
    born = started_at(new)
    wait_for(lambda: "hang:x" in events.done(), 10, message="the entry handled again")
    pid, when = events.starts("hang:x")[1]
    assert pid == new and when - born < 1.0, when - born
    wait_for(lambda: pending(client, "sa") == 0, 5, message="acknowledged")


def test_consumer_removed_by_reload_has_its_entry_claimed(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(redis_server.url, ["sa"], replicas=3, stop_timeout="1s"))
    pids = master.wait_running(3)
    messages = [f"slowfirst:6:{c}" for c in "abc"]
    add(client, "sa", messages)
    wait_for(lambda: all(events.starts(m) for m in messages), 10, message="three consumers busy")
    master.write(config(redis_server.url, ["sa"], replicas=2, stop_timeout="1s"))
    removed_pid = pids["consumer-sa-2"]
    wait_for(lambda: not psutil.pid_exists(removed_pid) or psutil.Process(removed_pid).status() == "zombie",
             10, message="the removed consumer killed after stop_timeout")
    died = time.time()
    held = next(m for m in messages if events.starts(m)[0][0] == removed_pid)
    wait_for(lambda: held in events.done(), 12, interval=0.1, message="the orphan handled elsewhere")
    again_pid, again = events.starts(held)[1]
    assert again_pid in (pids["consumer-sa"], pids["consumer-sa-1"]) and again - died < 10.0
    for other in set(messages) - {held}:
        assert len(events.starts(other)) == 1, events.starts(other)
    wait_for(lambda: pending(client, "sa") == 0, 5, message="acknowledged")


def test_graceful_stop_and_poison_entry(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    add(client, "sa", ["poison:p", *[f"ok-{i}" for i in range(20)]])
    master = start_master(config(redis_server.url, ["sa"], kwargs=", max_attempts = 3, retry_delay = 0.5"))
    wait_for(lambda: client.llen("sa:dead") == 1, 15, message="the dead letter")
    record = json.loads(client.lindex("sa:dead", 0))
    assert record["message"] == "poison:p" and record["attempts"] == 3
    assert record["instance"] == "consumer-sa" and "RuntimeError" in record["error"]
    starts = events.starts("poison:p")
    assert len(starts) == 3
    ok_done = [when for kind, _, when, m in events.all() if kind == "done" and m.startswith("ok-")]
    assert len(ok_done) == 20 and max(ok_done) < starts[1][1]
    add(client, "sa", ["sleep:1.5:last", "after"])
    wait_for(lambda: events.starts("sleep:1.5:last"), 10, message="the slow entry started")
    master.call("stop", patterns=["consumer-sa"])
    wait_for(lambda: master.status()["consumer-sa"]["state"] == "stopped", 10, message="stopped")
    assert "sleep:1.5:last" in events.done() and not events.starts("after")
    assert pending(client, "sa") == 0 and not client.exists("sa:consumer:consumer-sa")


def test_redis_killed_and_restarted_mid_run(start_master, redis_server, tmp_path):
    from conftest import text_of
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    expected = {f"sleep:0.005:{i}" for i in range(500)}
    add(client, "sa", sorted(expected))
    master = start_master(config(redis_server.url, ["sa"], replicas=2))
    wait_for(lambda: len(events.done()) >= 100, 20, message="some progress")
    redis_server.kill()
    time.sleep(1.5)
    redis_server.start()
    wait_for(lambda: expected <= events.done(), 30, interval=0.1, message="everything handled")
    client = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: pending(client, "sa") == 0, 10, message="everything acknowledged")
    for name in ("consumer-sa", "consumer-sa-1"):
        log = text_of(master.log_dir / f"{name}.log")
        assert log.count("lost redis://") == 1 and log.count("reconnected to redis://") == 1, log
