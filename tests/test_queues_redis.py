"""The Redis list consumer against a real redis-server and real `orch up` masters: nothing lost
under SIGKILLs, recycling and limit kills; fast redelivery; graceful stop; poison messages;
server restarts; wrong URLs."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis

from conftest import text_of, wait_for
from queue_support import Events, consumer_config, batches_of, chaos, redis_leftovers, write_handlers, started_at

TARGET = "orchestrator.queues.redis:QueueConsumer"


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def config(url: str, queues: list[str], *, replicas: int = 1, preload: bool = False,
           kwargs: str = "", extra: str = "", stop_timeout: str = "2s") -> str:
    if "retry_delay" not in kwargs:
        kwargs += ", retry_delay = 0.1"
    return consumer_config(TARGET, "queue", queues, f'url = "{url}", queue = "{{{{ queue }}}}"', replicas=replicas,
                           preload=preload, kwargs=kwargs, extra=extra, stop_timeout=stop_timeout)


def push(client: redis.Redis, queue: str, messages: list[str]) -> None:
    for start in range(0, len(messages), 500):
        client.lpush(queue, *messages[start:start + 500])


def all_handled(events: Events, expected: set[str]) -> bool:
    return expected <= events.done()


@pytest.mark.parametrize("preload", [False, True], ids=["plain", "preload"])
def test_nothing_lost_under_random_sigkills(start_master, redis_server, tmp_path, preload):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    queues = ["qa", "qb"]
    count = 800 if preload else 500  # plain restarts cost a whole interpreter start each
    expected = {f"sleep:0.003:{q}-{i}" for q in queues for i in range(count)}  # 3 ms of work each
    master = start_master(config(redis_server.url, queues, replicas=2, preload=preload,
                                 kwargs=", max_attempts = 50"))
    master.wait_running(4, timeout=20)
    batches = [b for q in queues for b in batches_of(sorted(m for m in expected if f":{q}-" in m), 20,
                                                       lambda part, q=q: push(client, q, part))]
    kills = chaos(master, lambda: all_handled(events, expected), zygotes=preload, seed=10, batches=batches)
    wait_for(lambda: expected <= events.done(), 40, interval=0.2, message="every message handled")
    missing = expected - events.done()
    assert not missing, f"{len(missing)} never handled after {kills} kills, e.g. {sorted(missing)[:5]}"
    assert kills >= 40
    wait_for(lambda: not redis_leftovers(client, queues), 10, message="empty processing lists")
    assert client.llen("qa:dead") == client.llen("qb:dead") == 0


def test_nothing_lost_with_recycling_timeout_and_memory_kills(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    queues = ["qa", "qb"]
    expected = {f"{q}-{i}" for q in queues for i in range(400)}
    special = {f"hang:{q}-h{i}" for q in queues for i in range(2)} | {f"mem:{q}-m{i}" for q in queues for i in range(2)}
    for q in queues:
        mine = sorted(m for m in expected | special if q in m)
        rng = random.Random(q)
        rng.shuffle(mine)
        push(client, q, mine)
    master = start_master(config(redis_server.url, queues, replicas=2, preload=True, extra="""
    max_requests = 50
    timeout = "2s"
    memory = { hard = "150MiB" }
    """))
    wait_for(lambda: all_handled(events, expected | special), 60, interval=0.2,
             message="every message handled")
    wait_for(lambda: not redis_leftovers(client, queues), 10, message="empty processing lists")
    master_log = text_of(master.log_dir / "orch.log") + master.stderr()
    restarts = sum(r["restarts"] for r in master.status().values())
    assert restarts >= 2 * 800 // 50 // 2, restarts  # max_requests recycling happened
    for m in special:  # each was killed on its first attempt (timeout or memory.hard), then handled
        assert len(events.starts(m)) == 2, (m, events.starts(m), master_log[-2000:])


def test_killed_mid_message_is_handled_again_within_1s_of_the_replacement(start_master, redis_server,
                                                                         tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(redis_server.url, ["qa"], preload=True))
    old = master.wait_running(1)["consumer-qa"]
    client.lpush("qa", "hang:x")
    wait_for(lambda: events.starts("hang:x"), 10, message="the handler to start")
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := master.pids().get("consumer-qa")) not in (None, old) and p, 10,
                   message="the replacement")
    born = started_at(new)
    wait_for(lambda: len(events.starts("hang:x")) == 2, 10, message="the message handled again")
    pid, when = events.starts("hang:x")[1]
    assert pid == new
    assert when - born < 1.0, f"redelivered {when - born:.2f}s after the replacement started"
    wait_for(lambda: "hang:x" in events.done(), 5, message="second attempt to finish")
    wait_for(lambda: client.llen("qa:processing:consumer-qa") == 0, 5, message="the ack")


def test_consumer_removed_by_reload_has_its_message_reclaimed(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(redis_server.url, ["qa"], replicas=3, stop_timeout="1s"))
    pids = master.wait_running(3)
    messages = [f"slowfirst:6:{c}" for c in "abc"]  # each busy consumer outlives its 5 s lease
    client.lpush("qa", *messages)
    wait_for(lambda: all(events.starts(m) for m in messages), 10, message="three consumers busy")
    master.write(config(redis_server.url, ["qa"], replicas=2, stop_timeout="1s"))
    wait_for(lambda: len(master.status()) == 2, 10, message="one removed")
    removed_pid = pids["consumer-qa-2"]
    wait_for(lambda: not psutil.pid_exists(removed_pid) or psutil.Process(removed_pid).status() == "zombie",
             10, message="the removed consumer killed after stop_timeout")
    died = time.time()
    held = next(m for m in messages if events.starts(m)[0][0] == removed_pid)
    assert held not in events.done()
    wait_for(lambda: held in events.done(), 12, interval=0.1, message="the orphan handled elsewhere")
    again_pid, again = events.starts(held)[1]
    assert again_pid in (pids["consumer-qa"], pids["consumer-qa-1"])
    assert again - died < 10.0, again - died
    for other in set(messages) - {held}:  # the live busy consumers kept theirs
        assert len(events.starts(other)) == 1, events.starts(other)
    wait_for(lambda: not redis_leftovers(client, ["qa"]), 5, message="nothing left")


def test_a_busy_live_consumer_keeps_its_message(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(redis_server.url, ["qa"], replicas=3, kwargs=", lease = 2"))
    master.wait_running(3)
    client.lpush("qa", "sleep:5:long")  # longer than 2 leases: only the heartbeat keeps it
    wait_for(lambda: "sleep:5:long" in events.done(), 15, interval=0.1, message="the long message")
    assert len(events.starts("sleep:5:long")) == 1


def test_graceful_stop_finishes_the_message_in_hand_and_takes_no_new_one(start_master, redis_server,
                                                                          tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(redis_server.url, ["qa"], stop_timeout="10s"))
    pid = master.wait_running(1)["consumer-qa"]
    client.lpush("qa", "sleep:1.5:first", *[f"after-{i}" for i in range(5)])
    wait_for(lambda: events.starts("sleep:1.5:first"), 10, message="the first message started")
    master.call("stop", patterns=["consumer-qa"])
    wait_for(lambda: master.status()["consumer-qa"]["state"] == "stopped", 10, message="stopped")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert "sleep:1.5:first" in events.done()
    assert not any(m.startswith("after-") for m in events.counts("start"))
    assert client.llen("qa") == 5 and client.llen("qa:processing:consumer-qa") == 0
    assert client.scard("qa:consumers") == 0 and not client.exists("qa:consumer:consumer-qa")


def test_poison_message_dead_lettered_after_exactly_max_attempts(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    client.lpush("qa", "poison:p", *[f"ok-{i}" for i in range(30)])
    start_master(config(redis_server.url, ["qa"], kwargs=", max_attempts = 3, retry_delay = 0.5"))
    wait_for(lambda: client.llen("qa:dead") == 1, 15, message="the dead letter")
    record = json.loads(client.lindex("qa:dead", 0))
    assert record["message"] == "poison:p" and record["attempts"] == 3
    assert record["instance"] == "consumer-qa" and "RuntimeError: poison message" in record["error"]
    starts = events.starts("poison:p")
    assert len(starts) == 3
    ok_done = [when for kind, _, when, m in events.all() if kind == "done" and m.startswith("ok-")]
    assert len(ok_done) == 30 and max(ok_done) < starts[1][1]  # never blocked the ones behind it
    time.sleep(1)
    assert len(events.starts("poison:p")) == 3 and not redis_leftovers(client, ["qa"])
    assert client.hlen("qa:attempts") == 0


def test_redis_killed_and_restarted_mid_run(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    expected = {f"sleep:0.005:{i}" for i in range(600)}
    push(client, "qa", sorted(expected))
    master = start_master(config(redis_server.url, ["qa"], replicas=2))
    wait_for(lambda: len(events.done()) >= 100, 20, message="some progress")
    redis_server.kill()
    time.sleep(1.5)
    redis_server.start()
    wait_for(lambda: expected <= events.done(), 30, interval=0.1, message="everything handled")
    client = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: not redis_leftovers(client, ["qa"]), 10, message="nothing left")
    for name in ("consumer-qa", "consumer-qa-1"):
        log = text_of(master.log_dir / f"{name}.log")
        assert log.count("lost redis://") == 1, log
        assert log.count("reconnected to redis://") == 1, log


def test_wrong_url_is_a_clear_error_with_crash_backoff(start_master, tmp_path):
    write_handlers(tmp_path)
    master = start_master(config("redis://127.0.0.1:1/0", ["qa"]).replace(
        'backoff = { initial = "0.05s", max = "0.5s" }', 'backoff = { initial = "0.5s", max = "2s" }').replace(
        'min_uptime = "0s"', 'min_uptime = "5s"'))
    log = master.log_dir / "consumer-qa.log"
    wait_for(lambda: "cannot reach redis://127.0.0.1:1/0" in text_of(log), 10, message="the error")
    time.sleep(3)
    attempts = text_of(log).count("cannot reach")
    assert 2 <= attempts <= 6, attempts  # crash backoff, not a tight loop
    assert "Traceback" not in text_of(log)
    assert master.status()["consumer-qa"]["restarts"] >= 1


def test_a_message_arriving_during_the_last_wait_is_put_back(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(redis_server.url, ["qa"], kwargs=", block = 3"))
    master.wait_running(1)
    wait_for(lambda: client.exists("qa:consumer:consumer-qa"), 5, message="the consumer waiting")
    time.sleep(0.3)  # inside its 3 s BLMOVE
    master.call("stop", patterns=["consumer-qa"])
    time.sleep(0.3)  # the stop signal has arrived; the BLMOVE is still waiting
    client.lpush("qa", "late")
    wait_for(lambda: master.status()["consumer-qa"]["state"] == "stopped", 10, message="stopped")
    assert not events.starts("late")
    assert client.lrange("qa", 0, -1) == [b"late"] and client.llen("qa:processing:consumer-qa") == 0
