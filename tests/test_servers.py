"""The real-server fixtures work: each answers on its own loopback port and is stopped after."""

from __future__ import annotations

import socket

import redis

from servers import Beanstalkd, Redis


def test_redis_server_answers_and_survives_a_kill(tmp_path):
    server = Redis(tmp_path / "r", appendonly=True)
    try:
        client = redis.Redis.from_url(server.url)
        client.rpush("q", b"a", b"b")
        server.kill()
        server.start()
        assert redis.Redis.from_url(server.url).lrange("q", 0, -1) == [b"a", b"b"]
    finally:
        server.stop()
    assert server.proc.poll() is not None


def test_beanstalkd_answers(tmp_path):
    server = Beanstalkd(tmp_path / "b")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(b"stats\r\n")
            assert sock.recv(100).startswith(b"OK ")
    finally:
        server.stop()
    assert server.proc.poll() is not None
