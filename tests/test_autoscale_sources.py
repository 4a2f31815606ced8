"""Backlog readings (supervise/backlog.py): the tiny protocols parsed (pure, tables), then each
source read on a real EventLoop from real redis-server and beanstalkd, a command, and a server
that never answers, while the loop goes on running its timers."""

from __future__ import annotations

import socket
import time

import pytest
import redis

from orchestrator.config.scaling import BacklogDecl
from orchestrator.loop import EventLoop
from orchestrator.supervise.backlog import (Reading, RespError, beanstalk_backlog, parse_resp, redis_backlog,
                                            redis_request)


@pytest.mark.parametrize("data, expected", [
    (b"+OK\r\n", "OK"), (b":42\r\n", 42), (b"$3\r\nabc\r\n", b"abc"), (b"$-1\r\n", None),
    (b"*2\r\n:1\r\n$1\r\nx\r\n", [1, b"x"]), (b"*1\r\n*2\r\n:1\r\n:2\r\n", [[1, 2]]),
])
def test_resp_values(data, expected):
    assert parse_resp(data) == (expected, len(data))
    assert parse_resp(data[:-1]) is None  # incomplete: wait for more


def test_resp_errors_and_replies():
    value, _ = parse_resp(b"-WRONGTYPE no\r\n")
    assert isinstance(value, RespError)
    assert redis_backlog("redis", "", ["OK", 7]) == 7
    assert redis_backlog("redis", "", ["OK", 7, 2, 1, 0], 4) == 10  # list, delayed, processing lists
    group = [b"name", b"g", b"consumers", 1, b"pending", 3, b"last-delivered-id", b"1-0",
             b"entries-read", 5, b"lag", 10]
    assert redis_backlog("redis-stream", "g", ["OK", 15, [group]]) == 13
    assert redis_backlog("redis-stream", "other", ["OK", 15, [group]]) == 15  # no group yet: the whole stream
    assert redis_backlog("redis-stream", "g", ["OK", 0, RespError("ERR no such key")]) == 0
    with pytest.raises(ValueError, match="NOAUTH"):
        redis_backlog("redis", "", [RespError("NOAUTH Authentication required."), 1])
    host, port, request, replies = redis_request(BacklogDecl("redis", "redis://:s3cret@h:7000/3", "jobs"))
    assert (host, port, replies) == ("h", 7000, 4) and b"AUTH" in request and b"SELECT" in request
    assert redis_request(BacklogDecl("redis", "redis://h/0", "jobs"), ("jobs:processing:w",))[3] == 4


def test_beanstalk_replies():
    body = b"---\nname: t\ncurrent-jobs-ready: 12\ncurrent-jobs-reserved: 1\n"
    assert beanstalk_backlog(b"OK %d\r\n" % len(body) + body + b"\r\n") == 12
    assert beanstalk_backlog(b"OK %d\r\n" % len(body) + body[:5]) is None
    assert beanstalk_backlog(b"NOT_FOUND\r\n") == 0


def read(source: BacklogDecl, env: dict | None = None, timeout: float = 5.0) -> tuple:
    """One reading on a fresh loop; also counts the loop's 10 ms ticks while it was pending."""
    loop = EventLoop()
    got: list[tuple] = []
    ticks = [0]

    def tick() -> None:
        ticks[0] += 1
        loop.call_later(0.01, tick)
    loop.call_later(0.01, tick)
    Reading(loop, source, lambda n, why: got.append((n, why)), env, None).start()
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        loop.run_once(0.05)
    loop.close()
    assert got, "no answer"
    return got[0] + (ticks[0],)


def test_real_servers(redis_server, beanstalkd_server):
    client = redis.Redis.from_url(redis_server.url)
    client.lpush("jobs", *[b"x"] * 25)
    assert read(BacklogDecl("redis", redis_server.url, "jobs"))[:2] == (25, None)
    client.zadd("jobs:delayed", {b"r1": 1, b"r2": 2})
    assert read(BacklogDecl("redis", redis_server.url, "jobs"))[:2] == (27, None)  # retries waiting count
    assert read(BacklogDecl("redis", redis_server.url, "none"))[:2] == (0, None)
    client.xgroup_create("s", "g", id="0", mkstream=True)
    for i in range(6):
        client.xadd("s", {"data": b"%d" % i})
    client.xreadgroup("g", "c1", {"s": ">"}, count=2)  # 2 pending, 4 still to deliver
    assert read(BacklogDecl("redis-stream", redis_server.url, "s", "g"))[:2] == (6, None)
    client.set("str", "v")
    count, why, _ = read(BacklogDecl("redis", redis_server.url, "str"))
    assert count is None and "WRONGTYPE" in why
    with socket.create_connection(("127.0.0.1", beanstalkd_server.port)) as conn:
        conn.sendall(b"use mail\r\n" + b"put 0 0 60 1\r\nx\r\n" * 3)
        conn.recv(100)
        time.sleep(0.1)
        assert read(BacklogDecl("beanstalkd", beanstalkd_server.url, "mail"))[:2] == (3, None)
    assert read(BacklogDecl("beanstalkd", beanstalkd_server.url, "empty"))[:2] == (0, None)


def test_commands():
    assert read(BacklogDecl("command", argv=("sh", "-c", "echo $N"), timeout=2), {"N": "41", "PATH": "/bin:/usr/bin"})[:2] \
        == (41, None)
    count, why, _ = read(BacklogDecl("command", argv=("echo", "many")))
    assert count is None and "not a whole number" in why
    began = time.monotonic()
    count, why, ticks = read(BacklogDecl("command", argv=("sleep", "30"), timeout=0.3))
    assert count is None and "0.3s" in why and time.monotonic() - began < 2
    count, why, _ = read(BacklogDecl("command", argv=("/no/such/program",)))
    assert count is None and why


def test_a_server_that_never_answers_times_out_while_the_loop_runs():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
        began = time.monotonic()
        count, why, ticks = read(BacklogDecl("redis", url, "jobs"))
        took = time.monotonic() - began
    assert count is None and "no answer within 2s" in why
    assert 1.9 <= took < 3 and ticks >= 30, "the loop kept running its timers while the reading waited"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    count, why, _ = read(BacklogDecl("redis", f"redis://127.0.0.1:{port}/0", "jobs"))
    assert count is None and "refused" in why
    count, why, _ = read(BacklogDecl("redis", "redis://localhost:1/0", "jobs"))
    assert count is None and why


def test_a_host_name_is_looked_up_off_the_loop():
    """The lookup runs in a short thread (a DNS server may take seconds): the loop goes on, and
    its failure (or the reading's timeout) is the reading's answer."""
    began = time.monotonic()
    count, why, ticks = read(BacklogDecl("redis", "redis://no-such-host.invalid:6379/0", "jobs"))
    took = time.monotonic() - began
    assert count is None and ("cannot resolve no-such-host.invalid" in why or "no answer" in why), why
    # A lookup that fails at once (no DNS here) leaves no time to tick; a slow one must not stall.
    assert ticks >= int(took / 0.05 * 0.5), "the loop ran its timers during the lookup"
