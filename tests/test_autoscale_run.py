"""Replicas that follow the backlog (issue 28) with real `orch up` masters against real
redis-server and beanstalkd: a burst scales a cell up within up_after + 1 s, idle brings it
back to min after down_after, SIGKILLs during both lose nothing, a source that goes away
freezes the count and recovers, min = 0 starts from nothing, `orch scale` pins."""

from __future__ import annotations

import datetime
import json
import random
import re
import socket
import time
import urllib.request

import pytest
import redis

from conftest import orch, wait_for
from queue_support import Events, chaos_kill, consumer_config, write_handlers
from servers import free_port

pytestmark = pytest.mark.slow  # real servers and masters, seconds of scaling

REDIS = "orchestrator.queues.redis:QueueConsumer"
BEANSTALKD = "orchestrator.queues.beanstalkd:QueueConsumer"


def config(target: str, source: str, values: list[str], *, low: int, high: int, per: int,
           up: str = "0.5s", down: str = "1s", step: int = 8, axis: str = "queue", kwargs: str = "") -> str:
    extra = f'scale = {{ up_after = "{up}", down_after = "{down}", step = {step} }}'
    text = consumer_config(target, axis, values, source, preload=True, kwargs=", retry_delay = 0.1" + kwargs,
                           extra=extra)
    return text.replace("replicas = 1", f"replicas = {{ min = {low}, max = {high}, backlog = {per} }}")


def cells(master) -> dict[str, dict]:
    return {row["cell"]: row for row in master.call("scale")["cells"]}


def running(master, prefix: str) -> int:
    return sum(1 for name, row in master.status().items()
               if name.startswith(prefix) and row["state"] == "running")


def test_a_burst_scales_up_within_up_after_and_idle_back_to_min(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(REDIS, f'url = "{redis_server.url}", queue = "{{{{ queue }}}}"', ["qa", "qb"],
                                 low=1, high=4, per=10, up="1s", down="1s", step=4))
    wait_for(lambda: running(master, "consumer-qa") == 1 and running(master, "consumer-qb") == 1, 15)
    assert len(master.status()) == 2  # min replicas only, not max
    burst = [f"sleep:0.2:qa-{i}" for i in range(120)]  # still busy when the count starts down
    pushed = time.time()
    client.lpush("qa", *burst)
    wait_for(lambda: cells(master)["consumer-qa"]["desired"] == 4, 1.0 + 1.0 + 1.0,
             message="consumer-qa scaled to 4 within up_after + 1 s")
    assert cells(master)["consumer-qb"]["desired"] == 1  # each cell on its own queue
    wait_for(lambda: running(master, "consumer-qa") == 4, 15, message="4 replicas running")
    wait_for(lambda: set(burst) <= events.done(), 30, interval=0.2, message="the burst handled")
    wait_for(lambda: cells(master)["consumer-qa"]["desired"] == 1, 1.0 + 1.0 + 3.0, message="back to min")
    wait_for(lambda: len([n for n in master.status() if n.startswith("consumer-qa")]) == 1, 10)
    row = cells(master)["consumer-qa"]
    assert row["backlog"] == 0 and "down to 1" in row["reason"], row
    starts = events.counts("start")
    assert max(starts[m] for m in burst) == 1, "a stopping consumer finishes its message: none handled twice"
    log = (master.log_dir.parent / "master.log").read_text() if (master.log_dir.parent / "master.log").exists() \
        else master.stderr()
    assert "scale consumer-qa: 1 -> 4" in log + master.stderr(), "each step is one log line"
    line = next(x for x in master.stderr().splitlines() if "scale consumer-qa: 1 -> 4" in x)
    decided = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    # up_after + 1 s (README): the next reading may come a PERIOD after the push. The slack is
    # for the loop's timers and the reading itself: 0.13-0.25 s seen under -n 4 on a loaded
    # machine; a decision that waited one more reading would still be a second late.
    assert decided - pushed <= 1.0 + 1.0 + 0.5, f"decided {decided - pushed:.2f}s after the burst (up_after 1s)"
    scaled = [e for e in master.call("events")["events"] if e["kind"] == "scaled" and e["cell"] == "consumer-qa"]
    assert [(e["before"], e["after"]) for e in scaled][:1] == [(1, 4)] and scaled[-1]["after"] == 1, scaled
    steps = re.findall(r"scale consumer-qa: (\d+) -> (\d+) \(", master.stderr())  # exactly one line per step
    assert [(int(a), int(b)) for a, b in steps] == [(e["before"], e["after"]) for e in scaled], (steps, scaled)
    assert all(e["reason"] and e["template"] == "consumer" for e in scaled), scaled


@pytest.mark.parametrize("backend", ["redis", "beanstalkd"])
def test_sigkills_while_scaling_up_and_down_lose_nothing(start_master, redis_server, beanstalkd_server, tmp_path,
                                                         backend):
    events = Events(write_handlers(tmp_path))
    if backend == "redis":
        client = redis.Redis.from_url(redis_server.url)
        text = config(REDIS, f'url = "{redis_server.url}", queue = "{{{{ queue }}}}"', ["qa"], low=1, high=6, per=20,
                      up="0.5s", down="1s", step=2, kwargs=", max_attempts = 50, lease = 2")
        send = lambda messages: client.lpush("qa", *messages)  # noqa: E731
    else:
        text = config(BEANSTALKD, f'url = "{beanstalkd_server.url}", tube = "{{{{ tube }}}}"', ["qa"], low=1, high=6,
                      per=20, up="0.5s", down="1s", step=2, axis="tube", kwargs=", max_attempts = 50")
        send = lambda messages: put(beanstalkd_server.port, "qa", messages)  # noqa: E731
    master = start_master(text)
    wait_for(lambda: running(master, "consumer-qa") == 1, 15)
    rng = random.Random(28)
    expected = {f"sleep:0.01:w{wave}-{i}" for wave in range(2) for i in range(300)}
    seen_counts, kills = set(), 0
    for wave in range(2):  # up with the burst, down as it drains, up again with the next
        send([m for m in sorted(expected) if f":w{wave}-" in m])
        deadline = time.monotonic() + 25
        wave_kills = 0
        # A kill every 0.05-0.2 s while the wave drains and, on a loaded machine where it
        # drained after a few of them (seen: 4-8 kills in all under -n 4 with other suites),
        # on while the count comes back down, until the wave had 6 real kills: every kill
        # lands while scaling up or down, however fast the consumers were.
        while ((not {m for m in expected if f":w{wave}-" in m} <= events.done() or wave_kills < 6)
               and time.monotonic() < deadline):
            time.sleep(rng.uniform(0.05, 0.2))
            wave_kills += chaos_kill(master, rng, zygotes=False)
            seen_counts.add(cells(master)["consumer-qa"]["desired"])
        kills += wave_kills
        wait_for(lambda: cells(master)["consumer-qa"]["desired"] == 1, 15,
                 message="back to min after the wave")
    wait_for(lambda: expected <= events.done(), 20, interval=0.2, message="every message handled")
    assert max(seen_counts) > 2 and kills >= 12, (seen_counts, kills)
    assert cells(master)["consumer-qa"]["backlog"] == 0


def put(port: int, tube: str, messages: list[str]) -> None:
    import greenstalk
    with greenstalk.Client(("127.0.0.1", port), use=tube) as client:
        for m in messages:
            client.put(m, ttr=30)


def test_a_source_that_goes_away_freezes_the_count_and_recovers(start_master, redis_server, tmp_path):
    write_handlers(tmp_path)
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(REDIS, f'url = "{redis_server.url}", queue = "{{{{ queue }}}}"', ["qa"],
                                 low=1, high=3, per=10, up="0.5s", down="1s", step=3))
    client.lpush("qa", *[f"sleep:1:{i}" for i in range(100)])
    wait_for(lambda: cells(master)["consumer-qa"]["desired"] == 3, 5)
    redis_server.kill()
    wait_for(lambda: cells(master)["consumer-qa"]["source_error"], 5, message="the reading fails")
    time.sleep(2.5)  # longer than down_after: an unreadable source must not count as idle
    row = cells(master)["consumer-qa"]
    assert row["desired"] == 3 and row["source_error"], row
    metrics_rows = master.call("status")["scaling"]
    assert metrics_rows[0]["source_error"]
    out = orch("status", "-c", str(master.config))
    assert "unreadable" in out.stdout, out.stdout
    redis_server.start()
    wait_for(lambda: cells(master)["consumer-qa"]["source_error"] is None, 5, message="readable again")
    errors = master.stderr().count("unreadable")
    assert errors == 1 and "readable again" in master.stderr(), "one log line per change of state"


def test_min_zero_starts_from_nothing_on_the_first_message_beanstalkd(start_master, beanstalkd_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    master = start_master(config(BEANSTALKD, f'url = "{beanstalkd_server.url}", tube = "{{{{ tube }}}}"', ["ta"],
                                 low=0, high=2, per=5, up="0.5s", down="1s", step=2, axis="tube"))
    wait_for(lambda: cells(master)["consumer-ta"]["backlog"] == 0, 5)
    assert master.status() == {}  # nothing runs
    with socket.create_connection(("127.0.0.1", beanstalkd_server.port)) as conn:
        conn.sendall(b"use ta\r\nput 0 0 60 9\r\nsleep:0:1\r\n")
        time.sleep(0.1)
        sent = time.monotonic()
    wait_for(lambda: cells(master)["consumer-ta"]["desired"] == 1, 0.5 + 1.0 + 0.5, message="one within up_after + 1 s")
    assert time.monotonic() - sent <= 2.0
    wait_for(lambda: "sleep:0:1" in events.done(), 15, message="the message handled")
    wait_for(lambda: master.status() == {}, 10, message="back to nothing")


def test_orch_scale_pins_until_auto(start_master, redis_server, tmp_path):
    write_handlers(tmp_path)
    port = free_port()
    text = config(REDIS, f'url = "{redis_server.url}", queue = "{{{{ queue }}}}"', ["qa", "qb"], low=1, high=4, per=10)
    master = start_master(text.replace('check_interval = "0.2s"', f'check_interval = "0.2s"\n    metrics = "127.0.0.1:{port}"'))
    wait_for(lambda: cells(master)["consumer-qa"]["backlog"] == 0, 10)
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'orch_replicas_desired{cell="consumer-qa",template="consumer"} 1' in scraped, scraped[-800:]
    assert 'orch_backlog{cell="consumer-qa",template="consumer"} 0' in scraped
    shown = orch("queues", "-c", str(master.config))
    assert "consumer-qa" in shown.stdout and "NOW/DESIRED" in shown.stdout, shown.stdout + shown.stderr
    out = orch("scale", "consumer", "3", "-c", str(master.config))
    assert out.returncode == 0, out.stderr
    wait_for(lambda: running(master, "consumer-qa") == 3 and running(master, "consumer-qb") == 3, 15)
    time.sleep(1.5)  # empty queues: without the pin this would go back to 1 after down_after
    assert cells(master)["consumer-qa"]["desired"] == 3 and cells(master)["consumer-qa"]["pinned"] == 3
    diff = orch("diff", "-c", str(master.config))
    assert diff.returncode == 0 and "0 to start, 0 to stop" in diff.stdout, diff.stdout  # pinned counts, not max
    bad = orch("scale", "consumer", "9", "-c", str(master.config))
    assert bad.returncode == 2 and "replicas.max" in bad.stderr
    assert orch("scale", "consumer-qa", "--auto", "-c", str(master.config)).returncode == 0
    wait_for(lambda: running(master, "consumer-qa") == 1, 10)
    assert cells(master)["consumer-qb"]["desired"] == 3  # the other cell stays pinned
    master.write(config(REDIS, f'url = "{redis_server.url}", queue = "{{{{ queue }}}}"', ["qa", "qb"],
                        low=2, high=2, per=10))
    wait_for(lambda: running(master, "consumer-qa") == 2 and running(master, "consumer-qb") == 2, 15,
             message="a save that changes the bounds applies at once")


def test_a_plain_command_names_its_source(start_master, redis_server, tmp_path):
    """A command template reads `backlog = { command = [...] }` (run by the master off its loop,
    reaped with the rest) or a Redis list it names, rendered per cell."""
    (tmp_path / "n-a.txt").write_text("2\n")
    (tmp_path / "n-b.txt").write_text("0\n")
    master = start_master(f"""
    [workers.sleeper]
    command = ["sleep", "600"]
    matrix = {{ part = ["a", "b"] }}
    replicas = {{ min = 0, max = 3 }}
    backlog = {{ command = ["cat", "n-{{{{ part }}}}.txt"], per = 1 }}
    scale = {{ up_after = "0.3s", down_after = "0.5s", step = 3 }}
    stop_timeout = "1s"
    [workers.lister]
    command = ["sleep", "600"]
    replicas = {{ min = 0, max = 2 }}
    backlog = {{ redis = "{redis_server.url}", list = "jobs:{{{{ template }}}}", per = 10 }}
    scale = {{ up_after = "0.3s", down_after = "0.5s" }}
    stop_timeout = "1s"
    """)
    wait_for(lambda: running(master, "sleeper-a") == 2, 10, message="two from the command's 2")
    assert running(master, "sleeper-b") == 0
    (tmp_path / "n-a.txt").write_text("0\n")
    (tmp_path / "n-b.txt").write_text("7\n")
    wait_for(lambda: running(master, "sleeper-b") == 3 and not any(n.startswith("sleeper-a") for n in master.status()),
             10, message="a back to nothing, b up to max")
    (tmp_path / "n-b.txt").write_text("many\n")
    wait_for(lambda: cells(master)["sleeper-b"]["source_error"], 5, message="a bad output is an unreadable source")
    assert "not a whole number" in cells(master)["sleeper-b"]["source_error"]
    redis.Redis.from_url(redis_server.url).lpush("jobs:lister", *[b"x"] * 15)
    wait_for(lambda: running(master, "lister") == 2, 10, message="the list's 15 ask for 2")
    assert master.proc.poll() is None


def test_min_zero_keeps_a_consumer_while_retries_wait(start_master, redis_server, tmp_path):
    """A failed message waits in QUEUE:delayed, which only a running consumer moves back: with
    min = 0 it counts as backlog, so the cell does not scale to nothing under it."""
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config(REDIS, f'url = "{redis_server.url}", queue = "{{{{ queue }}}}"', ["qa"],
                                 low=0, high=2, per=1, up="0.2s", down="0.5s", step=2,
                                 kwargs=", max_attempts = 4").replace("retry_delay = 0.1", "retry_delay = 0.4"))
    wait_for(lambda: cells(master)["consumer-qa"]["backlog"] == 0, 10)
    client.lpush("qa", "poison:1")
    wait_for(lambda: client.llen("qa:dead") == 1, 20, interval=0.1,
             message="the poison message retried to the dead letter, never stranded in qa:delayed")
    assert events.counts("start")["poison:1"] == 4
    wait_for(lambda: master.status() == {}, 10, message="back to nothing once nothing waits")


def test_a_stream_cell_follows_its_group_lag(start_master, redis_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    client = redis.Redis.from_url(redis_server.url)
    master = start_master(config("orchestrator.queues.redis_stream:StreamConsumer",
                                 f'url = "{redis_server.url}", stream = "{{{{ stream }}}}", group = "g"', ["sa"],
                                 low=0, high=2, per=5, up="0.3s", down="0.5s", step=2, axis="stream"))
    wait_for(lambda: cells(master)["consumer-sa"]["backlog"] == 0, 10)
    assert master.status() == {}
    sent = [f"sleep:0.1:s{i}" for i in range(20)]
    for m in sent:
        client.xadd("sa", {"data": m})
    wait_for(lambda: cells(master)["consumer-sa"]["desired"] == 2, 5, message="the stream's 20 ask for 2")
    wait_for(lambda: set(sent) <= events.done(), 20, interval=0.2, message="every entry handled")
    wait_for(lambda: master.status() == {}, 10, message="back to nothing")


def test_status_and_queues_json_carry_the_cells_as_orch_scale_does(start_master, redis_server, tmp_path):
    write_handlers(tmp_path)
    master = start_master(config(REDIS, f'url = "{redis_server.url}", queue = "{{{{ queue }}}}"', ["qa", "qb"],
                                 low=1, high=3, per=10))
    wait_for(lambda: running(master, "consumer-qa") == 1 and running(master, "consumer-qb") == 1
             and all(r["backlog"] == 0 and r["now"] == 1 for r in cells(master).values()), 15)

    def shown(*args: str) -> list[dict]:
        out = orch(*args, "--json", "-c", str(master.config))
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    scale = {r["cell"]: r for r in shown("scale")}
    assert set(scale) == {"consumer-qa", "consumer-qb"}
    row = scale["consumer-qa"]
    assert (row["now"], row["desired"], row["min"], row["max"], row["backlog"], row["readable"], row["pinned"]) \
        == (1, 1, 1, 3, 0, True, None) and row["reason"] and row["decided_at"], row
    for command in ("status", "queues"):
        rows = shown(command)
        listed = {r["cell"]: {k: v for k, v in r.items() if k != "kind"} for r in rows if r.get("kind") == "cell"}
        assert listed == scale, (command, listed, scale)  # the same keys and values as orch scale --json
        others = [r for r in rows if r.get("kind") != "cell"]
        assert others and all("cell" not in r for r in others), others  # instance / queue rows unchanged
    assert len([r for r in shown("status") if r.get("kind") != "cell"]) == 2  # min replicas, not max
    picked = shown("status", "consumer-qb*")
    assert [r["cell"] for r in picked if r.get("kind") == "cell"] == ["consumer-qb"], picked  # a status of some
