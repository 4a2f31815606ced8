"""The pure parts of orchestrator.queues: retry delays, dead-letter records, URL redaction,
kwargs checks, and the `orch queues` grouping and table."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from orchestrator.queues.base import (ConsumerConfigError, dead_letter_record, load_handler, original_bytes,
                                      positive_float, positive_int, redact, retry_delay)
from orchestrator.cli.queues_admin import queues_of, render


@pytest.mark.parametrize("attempt, initial, maximum, expected", [
    (1, 1.0, 60.0, 1.0), (2, 1.0, 60.0, 2.0), (3, 1.0, 60.0, 4.0), (7, 1.0, 60.0, 60.0),
    (1, 0.1, 0.3, 0.1), (3, 0.1, 0.3, 0.3), (0, 2.0, 60.0, 2.0),
])
def test_retry_delay_doubles_and_caps(attempt, initial, maximum, expected):
    assert retry_delay(attempt, initial, maximum) == pytest.approx(expected)


@pytest.mark.parametrize("body", [b"hello", "héllo".encode(), b"\xff\x00\xfe raw", b"", b'{"json": 1}'])
def test_dead_letter_records_keep_the_original_bytes(body):
    record = dead_letter_record(body, queue="q", error="E: x", attempts=3, instance="c-0", now=1.5)
    data = json.loads(record)
    assert (data["queue"], data["error"], data["attempts"], data["instance"]) == ("q", "E: x", 3, "c-0")
    assert ("message" in data) != ("message_b64" in data)
    assert original_bytes(record) == body


def test_original_bytes_of_a_foreign_record_is_the_record():
    assert original_bytes(b"not json") == b"not json"
    assert original_bytes(b"[1, 2]") == b"[1, 2]"


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:pw@h/1", "redis://user:***@h/1"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("beanstalk://h:11300", "beanstalk://h:11300"),
])
def test_redact_hides_passwords(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("kwargs, key, message", [
    ({"block": "soon"}, "block", "must be a number of seconds"),
    ({"block": 0}, "block", "must be > 0"),
    ({"max_attempts": 0}, "max_attempts", "must be a whole number >= 1"),
    ({"max_attempts": 2.5}, "max_attempts", "must be a whole number >= 1"),
    ({"max_attempts": True}, "max_attempts", "must be a whole number >= 1"),
])
def test_bad_kwargs_name_the_key(kwargs, key, message):
    check = positive_int if key == "max_attempts" else positive_float
    with pytest.raises(ConsumerConfigError, match=f"kwargs.{key} {message}"):
        check(kwargs, key, 1)


@pytest.mark.parametrize("spec, message", [
    ("nomodule", "must look like 'module:function'"),
    ("no_such_module_xyz:f", "cannot import handler"),
    ("json:no_such_function", "cannot import handler"),
    ("json:__doc__", "is not callable"),
])
def test_bad_handlers_are_clear(spec, message):
    with pytest.raises(ConsumerConfigError, match=message):
        load_handler(spec)


def test_a_consumer_with_a_missing_kwarg_logs_one_line_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "orchestrator.worker", "--target",
                             "orchestrator.queues.redis:QueueConsumer", "--name", "c",
                             "--kwargs", json.dumps({"url": "redis://127.0.0.1:1/0", "handler": "json:dumps"})],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "error: kwargs.queue is required" in result.stdout and "Traceback" not in result.stdout + result.stderr


def test_queues_of_groups_instances_by_backend_server_and_queue(tmp_path):
    from orchestrator.config.load import load_config
    from orchestrator.expand.render import expand
    (tmp_path / "workers.toml").write_text("""
    [workers.c]
    target = "orchestrator.queues.redis:QueueConsumer"
    matrix = { ip = ["10.0.0.1", "10.0.0.2"], queue = ["q1", "q2"] }
    replicas = 2
    kwargs = { url = "redis://{{ ip }}:6379/0", queue = "{{ queue }}", handler = "h:f" }
    [workers.b]
    target = "orchestrator.queues.beanstalkd:QueueConsumer"
    kwargs = { url = "beanstalk://10.0.0.9:11300", tube = "emails", handler = "h:f" }
    [workers.other]
    command = "sleep 100"
    """.replace("\n    ", "\n"))
    refs = queues_of(expand(load_config(tmp_path / "workers.toml")))
    assert [(r.backend, r.url, r.name, len(r.instances)) for r in refs] == [
        ("beanstalkd", "beanstalk://10.0.0.9:11300", "emails", 1),
        ("redis", "redis://10.0.0.1:6379/0", "q1", 2), ("redis", "redis://10.0.0.2:6379/0", "q1", 2),
        ("redis", "redis://10.0.0.1:6379/0", "q2", 2), ("redis", "redis://10.0.0.2:6379/0", "q2", 2)]


def test_render_lists_in_flight_instances_under_the_table():
    rows = [{"queue": "q1", "backend": "redis", "url": "redis://h/0", "configured": 2, "ready": 5,
             "retrying": 1, "in_flight": {"c-q1-0": 1}, "dead": 2, "consumers": 2}]
    lines = render(rows).splitlines()
    assert lines[1].split() == ["q1", "redis", "redis://h/0", "5", "1", "1", "2", "2/2"]
    assert lines[2] == "  q1: 1 in flight at c-q1-0"
    assert render([]) == "no queue consumers in this config"
