"""The beanstalkd consumer against a real beanstalkd and real masters."""

from __future__ import annotations

import pytest

import json
import os
import signal
import time

import greenstalk

from conftest import text_of, wait_for
from queue_support import Events, consumer_config, batches_of, chaos, write_handlers, started_at

TARGET = "orchestrator.queues.beanstalkd:QueueConsumer"


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


def config(url: str, tubes: list[str], *, replicas: int = 1, kwargs: str = "", stop_timeout: str = "2s") -> str:
    return consumer_config(TARGET, "tube", tubes, f'url = "{url}", tube = "{{{{ tube }}}}"', replicas=replicas,
                           kwargs=kwargs, stop_timeout=stop_timeout)


def put(url: str, tube: str, messages: list[str], ttr: int = 30) -> None:
    host, port = url.removeprefix("beanstalk://").split(":")
    with greenstalk.Client((host, int(port)), use=tube) as client:
        for m in messages:
            client.put(m, ttr=ttr)


def stats(url: str, tube: str) -> dict:
    host, port = url.removeprefix("beanstalk://").split(":")
    with greenstalk.Client((host, int(port))) as client:
        try:
            return client.stats_tube(tube)
        except greenstalk.NotFoundError:
            return {}


def test_nothing_lost_under_random_sigkills(start_master, beanstalkd_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    url = beanstalkd_server.url
    tubes = ["ta", "tb"]
    expected = {f"{t}-{i}" for t in tubes for i in range(1000)}
    master = start_master(config(url, tubes, replicas=2, kwargs=", max_attempts = 50"))
    master.wait_running(4, timeout=20)
    batches = [b for t in tubes for b in batches_of(sorted(m for m in expected if m.startswith(t)), 15,
                                                      lambda part, t=t: put(url, t, part))]
    kills = chaos(master, lambda: expected <= events.done(), zygotes=True, seed=12, batches=batches)
    wait_for(lambda: expected <= events.done(), 40, interval=0.2, message="every message handled")
    missing = expected - events.done()
    assert not missing, f"{len(missing)} never handled, e.g. {sorted(missing)[:5]}"
    assert kills >= 30
    for t in tubes:
        wait_for(lambda: stats(url, t).get("current-jobs-reserved") == 0, 10, message="nothing reserved")
        assert stats(url, t)["current-jobs-ready"] == stats(url, t)["current-jobs-buried"] == 0


def test_killed_mid_job_is_handled_again_within_1s_of_the_replacement(start_master, beanstalkd_server,
                                                                      tmp_path):
    events = Events(write_handlers(tmp_path))
    master = start_master(config(beanstalkd_server.url, ["ta"]))
    old = master.wait_running(1)["consumer-ta"]
    put(beanstalkd_server.url, "ta", ["hang:x"], ttr=120)  # a TTR far beyond the test: the socket close returns it
    wait_for(lambda: events.starts("hang:x"), 10, message="the handler to start")
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (p := master.pids().get("consumer-ta")) not in (None, old) and p, 10,
                   message="the replacement")
    born = started_at(new)
    wait_for(lambda: "hang:x" in events.done(), 10, message="the job handled again")
    pid, when = events.starts("hang:x")[1]
    assert pid == new and when - born < 1.0, when - born


def test_busy_consumer_keeps_a_job_longer_than_its_ttr(start_master, beanstalkd_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    master = start_master(config(beanstalkd_server.url, ["ta"], replicas=2))
    master.wait_running(2)
    put(beanstalkd_server.url, "ta", ["sleep:5:long"], ttr=2)
    wait_for(lambda: "sleep:5:long" in events.done(), 15, interval=0.1, message="the long job")
    assert len(events.starts("sleep:5:long")) == 1


def test_poison_job_buried_after_exactly_max_attempts_then_kicked(start_master, beanstalkd_server, tmp_path):
    from conftest import orch
    events = Events(write_handlers(tmp_path))
    url = beanstalkd_server.url
    put(url, "ta", ["poison:p", *[f"ok-{i}" for i in range(20)]])
    master = start_master(config(url, ["ta"], kwargs=", max_attempts = 3, retry_delay = 1"))
    wait_for(lambda: stats(url, "ta").get("current-jobs-buried") == 1, 15, message="the buried job")
    starts = events.starts("poison:p")
    assert len(starts) == 3
    ok_done = [when for kind, _, when, m in events.all() if kind == "done" and m.startswith("ok-")]
    assert len(ok_done) == 20 and max(ok_done) < starts[1][1]
    # The master writes a chatty pipe to its file on a 50 ms timer: poll for the line.
    wait_for(lambda: "buried job" in (log := text_of(master.log_dir / "consumer-ta.log"))
             and "after 3 attempts: RuntimeError: poison message" in log, 5, message="the burial logged")
    shown = orch("queues", "--json", "-c", str(master.config), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[0]["dead"] == 1
    kicked = orch("queues", "retry", "ta", "-c", str(master.config), cwd=tmp_path)
    assert kicked.returncode == 0 and "moved 1" in kicked.stdout, kicked
    wait_for(lambda: len(events.starts("poison:p")) == 4, 10, message="the kicked job tried again")


def test_graceful_stop_and_wrong_url(start_master, beanstalkd_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    url = beanstalkd_server.url
    master = start_master(config(url, ["ta"], stop_timeout="10s"))
    master.wait_running(1)
    put(url, "ta", ["sleep:1.5:first", *[f"after-{i}" for i in range(3)]])
    wait_for(lambda: events.starts("sleep:1.5:first"), 10, message="the first job started")
    master.call("stop", patterns=["consumer-ta"])
    wait_for(lambda: master.status()["consumer-ta"]["state"] == "stopped", 10, message="stopped")
    assert "sleep:1.5:first" in events.done() and not events.starts("after-0")
    assert stats(url, "ta")["current-jobs-ready"] == 3
    master.write(config("beanstalk://127.0.0.1:1", ["tb"]))
    log = master.log_dir / "consumer-tb.log"
    wait_for(lambda: "cannot reach beanstalk://127.0.0.1:1" in text_of(log), 10, message="the error")
    assert "Traceback" not in text_of(log)


def test_beanstalkd_killed_and_restarted_mid_run(start_master, beanstalkd_server, tmp_path):
    events = Events(write_handlers(tmp_path))
    url = beanstalkd_server.url
    expected = {f"sleep:0.005:{i}" for i in range(500)}
    put(url, "ta", sorted(expected))
    master = start_master(config(url, ["ta"], replicas=2))
    wait_for(lambda: len(events.done()) >= 100, 20, message="some progress")
    beanstalkd_server.kill()  # its binlog (-b) keeps every job not yet deleted
    time.sleep(1.5)
    beanstalkd_server.start()
    wait_for(lambda: expected <= events.done(), 30, interval=0.1, message="everything handled")
    wait_for(lambda: stats(url, "ta").get("current-jobs-ready", 0) == 0
             and stats(url, "ta").get("current-jobs-reserved", 0) == 0, 10, message="tube empty")
    for name in ("consumer-ta", "consumer-ta-1"):
        log = text_of(master.log_dir / f"{name}.log")
        assert log.count("lost beanstalk://") == 1 and log.count("reconnected to beanstalk://") == 1, log
