"""Start order (`after`, issue 27): the pure decision and the config's checks as tables, then
real masters: a consumer that starts only once a server is ready and a one-shot migration
exited 0, a failing migration that keeps it waiting and says why, a reload that adds `after`
and restarts nothing, and a cycle refused with one located line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import orch, wait_for
from servers import free_port
from orchestrator.config.order import order_problems, parse_after
from orchestrator.supervise.order import Peer, blocking, may_start, waiting_for

# --- pure: who may start -------------------------------------------------------------------

# (state, ready, one_shot, last_exit, what it blocks with)
PEERS = [
    ("running", True, False, None, None),
    ("running", False, False, None, "not ready"),
    ("starting", False, False, None, "not ready"),
    ("backoff", False, False, "exit 1", "backoff"),
    ("stopped", False, False, None, "stopped"),
    ("exited", False, True, "exit 0", None),             # a one-shot done
    ("running", True, True, None, "to exit 0"),          # ready is not enough for a one-shot
    ("exited", False, True, "exit 2", "to exit 0, last: exit 2"),
    ("waiting", False, True, None, "to exit 0"),
]


pytestmark = pytest.mark.slow  # real programs or servers, or seconds of waiting


@pytest.mark.parametrize("state,ready,one_shot,last_exit,expected", PEERS)
def test_what_a_peer_blocks_with(state: str, ready: bool, one_shot: bool, last_exit: str | None,
                                 expected: str | None) -> None:
    assert blocking(Peer("p-0", state, ready, one_shot, last_exit)) == expected


def test_who_may_start() -> None:
    peers = {"redis": [Peer("redis-0", "running", True, False), Peer("redis-1", "running", False, False)],
             "migrate": [Peer("migrate", "exited", False, True, "exit 0")]}
    assert may_start({"a": ("migrate",), "b": ("redis", "migrate"), "c": ("gone",), "d": ()}, peers) == {
        "a": None, "b": "redis-1 (not ready)", "c": None, "d": None}


def test_a_long_wait_names_three_and_counts_the_rest() -> None:
    peers = {"r": [Peer(f"r-{i}", "starting", False, False) for i in range(5)]}
    assert waiting_for(("r",), peers) == "r-0 (not ready), r-1 (not ready), r-2 (not ready) and 2 more"


# --- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("after,defined,expected", [
    ({"a": ("b",), "b": ()}, "ab", []),
    ({"a": ("b",), "b": ("a",)}, "ab", [("a", "a cycle in after: a -> b -> a")]),
    ({"c": ("a",), "a": ("b",), "b": ("c",), "d": ("a",)}, "abcd", [("a", "a cycle in after: a -> b -> c -> a")]),
    ({"a": ("a",)}, "a", [("a", "'a' cannot start after itself")]),
    ({"a": ("x",)}, "a", [("a", "unknown template 'x' in after")]),
    ({"a": ("b",)}, "ab", []),  # b is defined but invalid: its own problem is reported, not this
    ({"a": ("b", "c"), "b": ("c",), "c": ()}, "abc", []),  # a diamond is no cycle
])
def test_order_problems(after: dict, defined: str, expected: list) -> None:
    assert order_problems(after, defined) == expected


@pytest.mark.parametrize("value,message", [("redis", "array of template names"), ([""], "array of template names"),
                                           (["a", "a"], "'a' named twice")])
def test_bad_after_is_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_after(value)


def test_a_cycle_is_exit_2_with_one_located_line(tmp_path: Path) -> None:
    config = tmp_path / "workers.toml"
    config.write_text('[workers.a]\ncommand = "sleep 1"\nafter = ["b"]\n\n'
                      '[workers.b]\ncommand = "sleep 1"\nafter = ["a"]\n')
    result = orch("check", "-c", str(config))
    lines = [line for line in result.stderr.splitlines() if "cycle" in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f"{config}:3" in lines[0] and "workers.a.after" in lines[0] and "a -> b -> a" in lines[0]


# --- real masters ----------------------------------------------------------------------------

SERVER = '''
import os, socket, sys, time
while not os.path.exists("serve"):  # the test says when: until then the consumer waits
    time.sleep(0.01)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
open("server-bound", "w").write(repr(time.time()))
while True:
    s.accept()[0].close()
'''
MIGRATE = '''
import os, sys, time
time.sleep(0.5)
open("migrated", "w").write(repr(time.time()))
sys.exit(0 if os.path.exists("migration-ok") else 1)
'''
CONSUMER = '''
import os, time
open(f"consumer-{os.getpid()}", "w").write(repr(time.time()))
time.sleep(600)
'''


def _config(tmp_path: Path, port: int, after: str = 'after = ["server", "migrate"]') -> str:
    for name, text in (("server.py", SERVER), ("migrate.py", MIGRATE), ("consumer.py", CONSUMER)):
        (tmp_path / name).write_text(text)
    return f'''
    [workers.consumer]
    command = "{sys.executable} consumer.py"
    {after}

    [workers.server]
    command = "{sys.executable} server.py {port}"
    min_uptime = "0.1s"
    probes = {{ readiness = {{ tcp = "127.0.0.1:{port}", period = "0.05s", failures = 1 }} }}

    [workers.migrate]
    command = "{sys.executable} migrate.py"
    restart = "never"
    '''


def _started(tmp_path: Path) -> list[float]:
    return [float(p.read_text() or 0) for p in tmp_path.glob("consumer-*")]


def test_consumer_starts_after_the_server_is_ready_and_migrate_exited_0(start_master, tmp_path: Path) -> None:
    (tmp_path / "migration-ok").touch()
    master = start_master(_config(tmp_path, free_port()))
    row = wait_for(lambda: (r := master.status()["consumer"])["state"] == "waiting" and r, 5, message="waiting")
    assert row["pid"] is None and row["reason"].startswith("waiting for ")
    text = orch("status", "-c", str(master.config)).stdout
    assert "waiting for" in text and "server (not ready)" in text, text
    (tmp_path / "serve").touch()  # not before: a loaded machine's `orch status` took 2 s to start
    wait_for(lambda: master.status()["consumer"]["state"] == "running", 10, message="the consumer running")
    started = wait_for(lambda: _started(tmp_path), 5, message="the consumer's start time")
    assert started[0] > float((tmp_path / "server-bound").read_text())
    assert started[0] > float((tmp_path / "migrated").read_text())
    rows = master.status()
    assert rows["migrate"]["state"] == "exited" and rows["server"]["ready"]


def test_a_failing_migration_keeps_the_consumer_waiting_and_says_why(start_master, tmp_path: Path) -> None:
    (tmp_path / "serve").touch()
    master = start_master(_config(tmp_path, free_port()))
    wait_for(lambda: master.status()["migrate"]["state"] == "exited", 10, message="migrate exited")
    row = wait_for(lambda: (r := master.status()["consumer"])["reason"] == "waiting for migrate (to exit 0, "
                   "last: exit 1)" and r, 5, message="the reason")
    assert row["state"] == "waiting" and row["pid"] is None and not _started(tmp_path)
    (tmp_path / "migration-ok").touch()
    orch("start", "migrate", "-c", str(master.config))
    wait_for(lambda: master.status()["consumer"]["state"] == "running", 10, message="the consumer running")


def test_a_reload_that_adds_after_restarts_nothing(start_master, tmp_path: Path) -> None:
    port = free_port()
    master = start_master(_config(tmp_path, port, after=""))
    pid = wait_for(lambda: master.status()["consumer"]["pid"], 5, message="the consumer running")
    master.config.write_text(__import__("textwrap").dedent(_config(tmp_path, port)))
    master.call("reload")
    time.sleep(0.3)  # a restart would show within this
    row = master.status()["consumer"]
    assert row["pid"] == pid and row["state"] == "running" and row["restarts"] == 0
