"""`orch queues` and `orch queues retry` against a real redis-server and a real master."""

from __future__ import annotations

import json

import redis

from conftest import orch, wait_for
from queue_support import Events, write_handlers
from test_queues_stream import config as stream_config
from test_queues_redis import config


def queues_json(master, tmp_path) -> list[dict]:
    result = orch("queues", "--json", "-c", str(master.config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_queues_shows_ready_in_flight_dead_and_consumers_then_retries(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    client.lpush("qa", "poison:p")
    master = start_master(config(redis_server.url, ["qa", "qb"], replicas=2,
                                 kwargs=", max_attempts = 2, retry_delay = 0.1"))
    master.wait_running(4)
    wait_for(lambda: client.llen("qa:dead") == 1, 10, message="the dead letter")
    client.lpush("qa", "hang:h")
    wait_for(lambda: events.starts("hang:h"), 10, message="a consumer holding a message")
    holder = next(n for n, r in master.status().items() if r["pid"] == events.starts("hang:h")[0][0])
    client.lpush("qb", "x1", "x2", "x3")
    master.call("stop", patterns=["consumer-qb*"])
    wait_for(lambda: all(r["state"] == "stopped" for n, r in master.status().items() if "qb" in n), 10,
             message="qb consumers stopped")
    client.lpush("qb", "y1")
    rows = {r["queue"]: r for r in queues_json(master, tmp_path)}
    assert rows["qa"]["in_flight"] == {holder: 1} and rows["qa"]["dead"] == 1
    assert rows["qa"]["consumers"] == 2 and rows["qa"]["configured"] == 2
    assert rows["qb"]["consumers"] == 0 and rows["qb"]["ready"] >= 1 and rows["qb"]["in_flight"] == {}
    table = orch("queues", "-c", str(master.config), cwd=tmp_path)
    assert table.returncode == 0 and f"qa: 1 in flight at {holder}" in table.stdout, table.stdout
    assert table.stdout.splitlines()[0].split() == ["QUEUE", "BACKEND", "SERVER", "READY", "RETRYING",
                                                    "IN", "FLIGHT", "DEAD", "CONSUMERS"]
    moved = orch("queues", "retry", "qa", "-c", str(master.config), cwd=tmp_path)
    assert moved.returncode == 0 and "moved 1 dead-lettered" in moved.stdout, moved
    wait_for(lambda: client.llen("qa:dead") == 1 and len(events.starts("poison:p")) == 4, 10,
             message="the message retried from scratch (attempts reset) and dead again")
    unknown = orch("queues", "retry", "nope", "-c", str(master.config), cwd=tmp_path)
    assert unknown.returncode == 2 and "no queue 'nope'" in unknown.stderr


def test_queues_on_streams(start_master, redis_server, tmp_path):
    write_handlers(tmp_path)
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(stream_config(redis_server.url, ["sa"], kwargs=", max_attempts = 1"))
    master.wait_running(1)
    client.xadd("sa", {"data": "poison:p"})
    wait_for(lambda: client.llen("sa:dead") == 1, 10, message="the dead letter")
    master.call("stop", patterns=["consumer-sa"])
    wait_for(lambda: master.status()["consumer-sa"]["state"] == "stopped", 10, message="stopped")
    client.xadd("sa", {"data": "later"})
    # A consumer stopped the hard way (SIGKILL after stop_timeout, under load) leaves its lease
    # until it expires: consumers reaches 0 within the lease, not necessarily at once.
    wait_for(lambda: queues_json(master, tmp_path)[0]["consumers"] == 0, 15, interval=0.5,
             message="no live consumer")
    row = queues_json(master, tmp_path)[0]
    assert (row["backend"], row["ready"], row["dead"], row["consumers"]) == ("redis-stream", 1, 1, 0)
    moved = orch("queues", "retry", "sa", "-c", str(master.config), cwd=tmp_path)
    assert moved.returncode == 0 and client.llen("sa:dead") == 0
    assert client.xrevrange("sa", count=1)[0][1] == {b"data": b"poison:p"}


def test_unreachable_redis_is_one_line_exit_1(tmp_path):
    (tmp_path / "workers.toml").write_text(config("redis://127.0.0.1:1/0", ["qa"]))
    result = orch("queues", "-c", str(tmp_path / "workers.toml"), cwd=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "127.0.0.1:1" in result.stderr, result.stderr
    empty = tmp_path / "plain.toml"
    empty.write_text('[workers.w]\ncommand = "sleep 1"\n')
    none = orch("queues", "-c", str(empty), cwd=tmp_path)
    assert none.returncode == 0 and "no queue consumers" in none.stdout


def test_seed_config_runs_against_a_real_redis(start_master, redis_server, tmp_path):
    import shutil
    from conftest import ROOT, text_of
    shutil.copytree(ROOT / "configs" / "app", tmp_path / "app")
    text = (ROOT / "configs" / "redis-queues.toml").read_text()
    master = start_master(text.replace("port = 6379", f"port = {redis_server.port}"))
    master.wait_running(4, timeout=20)
    client = redis.Redis.from_url(redis_server.url)
    client.lpush("queue1", "hello", "fail-me")
    log = master.log_dir
    wait_for(lambda: "handled b'hello'" in "".join(text_of(p) for p in log.glob("consumer-*.log")), 10,
             message="the example handler")
    rows = {r["queue"]: r for r in queues_json(master, tmp_path)}
    assert rows["queue1"]["consumers"] == 2 and rows["queue2"]["consumers"] == 2
    assert rows["queue1"]["dead"] + rows["queue1"]["retrying"] == 1
