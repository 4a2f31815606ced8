"""Stop order (issue 27): `orch down` stops dependents before what they are `after`. The
waves as a table, then a real master whose three templates (db <- app <- worker) write down
when SIGTERM reached them and when they exited."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import orch, wait_for
from orchestrator.supervise.order import stop_waves


@pytest.mark.parametrize("after,waves", [
    ({"a": (), "b": ()}, [["a", "b"]]),                                     # no after: one wave
    ({"app": ("db",), "db": ()}, [["app"], ["db"]]),
    ({"worker": ("app",), "app": ("db",), "db": (), "web": ()}, [["web", "worker"], ["app"], ["db"]]),
    ({"c": ("redis", "migrate"), "redis": (), "migrate": ()}, [["c"], ["migrate", "redis"]]),
    ({"a": ("b",), "b": ("a",)}, [["a", "b"]]),                              # a cycle: the rest at once
    ({"x": ("gone",)}, [["x"], ["gone"]]),                                   # a name with no instances
])
def test_stop_waves(after: dict, waves: list) -> None:
    assert stop_waves(after) == waves


STOPPER = '''
import os, signal, sys, time
name = sys.argv[1]
def stop(*_):
    open(f"term-{name}", "w").write(repr(time.time()))
    time.sleep(0.3)  # a graceful stop that takes a while: what depends on it must wait
    open(f"exit-{name}", "w").write(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(f"up-{name}", "w").write("")
while True:
    time.sleep(1)
'''


@pytest.mark.slow  # three graceful stops of 0.3s one after the other, and a master
def test_down_stops_dependents_first(start_master, tmp_path: Path) -> None:
    (tmp_path / "stopper.py").write_text(STOPPER)
    master = start_master("".join(f'''
    [workers.{name}]
    command = "{sys.executable} stopper.py {name}"
    min_uptime = "0.1s"
    {after}
    ''' for name, after in (("db", ""), ("app", 'after = ["db"]'), ("worker", 'after = ["app"]'),
                            ("other", ""))))
    wait_for(lambda: all((tmp_path / f"up-{n}").exists() for n in ("db", "app", "worker", "other")), 15,
             message="all four up")
    result = orch("down", "-c", str(master.config), timeout=30)
    assert result.returncode == 0, result.stderr
    master.proc.wait(10)
    t = {f"{kind}-{n}": float((tmp_path / f"{kind}-{n}").read_text())
         for kind in ("term", "exit") for n in ("db", "app", "worker", "other")}
    assert t["exit-worker"] <= t["term-app"], "app was asked to stop before worker, which is after it, exited"
    assert t["exit-app"] <= t["term-db"], "db was asked to stop before app, which is after it, exited"
    assert t["term-other"] < t["exit-worker"], "a template outside the order waited for no one"
