"""`orch upgrade` into an orch whose spawner protocol changed (handover/beside.py): the new
master starts a spawner of its own for every new start and keeps the old one only for the
processes it runs, until the last has exited. Real masters, a copy of the package whose
protocol revision and SpawnRequest differ, real exec."""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import psutil
import pytest

from conftest import orch, wait_for
from orchestrator.handover.state import HandoverError, check_protocol, spawner_protocol
from orchestrator.spawn.request import CORE, SpawnRequest
from orchestrator.spawn.spawner import SpawnerClient
from test_upgrade import PRELOADED, assert_every_line_once, fleet, package_copy, set_version, ticker_config

GUARD = "read -r line"  # the guard's shell script (spawn/guard.py: SCRIPT)
PRELOADED_WORKER = """
        [workers.pre]
        target = "prew:Tick"
        preload = true
        min_uptime = 0.2
        """


# --- which running spawner a new orch can take over (pure) ---------------------------------------
OTHER = [0, "token"]  # a protocol this orch does not speak


@pytest.mark.parametrize("spawner, master, rollouts, refused", [
    ({"protocol": None}, {}, [], None),  # a master from before protocols were recorded
    ({"protocol": spawner_protocol()}, {"cgroups": {"made": True}}, [{"code": [1, "x"]}], None),  # the same one
    ({"protocol": OTHER}, {}, [], None),  # another: a new spawner beside it
    ({"protocol": OTHER, "core": CORE}, {"cgroups": {"made": False}}, [{"code": None}], None),
    ({"protocol": OTHER, "core": CORE + 1}, {}, [], "not even the core"),
    ({"protocol": OTHER}, {"cgroups": {"made": True}}, [], 'cgroup = "auto"'),
    ({"protocol": OTHER}, {}, [{"code": [3, "code"]}], "new code is rolling"),
])
def test_a_spawner_of_another_protocol_is_kept_beside_unless_it_cannot_be(spawner, master, rollouts, refused):
    record = {"spawner": {"version": "0.1.0", **spawner}, "master": master, "rollouts": rollouts}
    if refused is None:
        check_protocol(record)
    else:
        with pytest.raises(HandoverError, match=refused):
            check_protocol(record)


def test_a_spawner_answers_the_core_as_request_py_spells_it():
    """The messages a newer master sends an older spawner kept beside it (spawn/request.py:
    CORE), sent raw as pickled tuples: if this fails, the core changed, and CORE (with
    PROTOCOL) must be bumped, or upgrades from this orch will misread its spawners."""
    client = SpawnerClient.start("orch: spawner (core test)")
    events: list = []

    def seen(kind: str) -> tuple | None:
        events.extend(client.receive())
        return next((e for e in events if e[0] == kind), None)
    try:
        read_end, write_end = os.pipe()
        assert client.spawn([SpawnRequest(1, ("sleep", "30"), {}, True, "/")], [(write_end,)]) == []
        os.close(write_end)
        os.close(read_end)
        [(token, pid)] = wait_for(lambda: seen("spawned"), 10, 0.01, "the spawn's answer")[1]
        client.sock.send(pickle.dumps(("signal", [(pid, int(signal.SIGTERM), True)])))
        [(ended, status)] = wait_for(lambda: seen("exited"), 10, 0.01, "the exit report")[1]
        assert (token, ended) == (1, pid) and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        client.sock.send(pickle.dumps(("close_sockets", ["none"])))
        client.sock.send(pickle.dumps(("exit",)))
        wait_for(lambda: seen("eof"), 10, 0.01, "the spawner's EOF after exit")
        assert os.waitpid(client.pid, 0)[0] == client.pid
    finally:
        if psutil.pid_exists(client.pid):
            os.kill(client.pid, signal.SIGKILL)  # its guard ends the child
            os.waitpid(client.pid, 0)
        client.sock.close()


# --- real masters --------------------------------------------------------------------------------
def new_protocol(tree: Path) -> None:
    """The package copy becomes version 2.0.0, speaking protocol 2: a request field the old spawner lacks."""
    set_version(tree, "2.0.0")
    request = tree / "orchestrator" / "spawn" / "request.py"
    text = request.read_text()
    field = "    cgroup: tuple | None = None"
    assert "PROTOCOL = 1\n" in text and field in text, "request.py changed shape: update this copy"
    request.write_text(text.replace("PROTOCOL = 1\n", "PROTOCOL = 2\n").replace(field, "    nice: int = 0\n" + field))


def spawners(master) -> list[psutil.Process]:
    return [p for p in psutil.Process(master.pid).children() if "spawner" in " ".join(p.cmdline())]


def guard_of(spawner: psutil.Process) -> psutil.Process:
    return next(p for p in spawner.children() if GUARD in " ".join(p.cmdline()))


def upgraded(start_master, tmp_path: Path, monkeypatch, extra: str = "") -> tuple:
    """A master running two tickers, upgraded into protocol 2: (master, its fleet before,
    the old spawner, its guard, the new spawner, the package copy)."""
    tree = package_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tree))
    master = start_master(ticker_config(tmp_path) + extra)
    master.wait_running(3 if extra else 2)
    before = fleet(master)
    [old] = spawners(master)
    old_guard = guard_of(old)
    new_protocol(tree)  # what `pip install -U` would have done
    result = orch("upgrade", "-c", str(master.config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "now runs orch 2.0.0 (was 0.1.0)" in result.stdout, result.stdout
    new = wait_for(lambda: next((p for p in spawners(master) if p.pid != old.pid), None), 10,
                   message="the new spawner")
    return master, before, old, old_guard, new, tree


@pytest.mark.slow
def test_an_upgrade_across_protocols_keeps_the_old_spawner_until_its_last_child_exits(
        start_master, tmp_path, monkeypatch):
    master, before, old, old_guard, new, tree = upgraded(start_master, tmp_path, monkeypatch)
    assert fleet(master) == before, "an instance was restarted by the upgrade"
    assert {p.pid for p in old.children()} >= {pid for pid, _ in before.values()}, "the old spawner lost its children"
    for log in ("ticker.log", "ticker-1.log"):  # only numbers: no ticker saw a signal
        assert_every_line_once(master.log_dir / log)
    versions = master.call("status")["versions"]
    assert versions["master"] == versions["spawner"] == "2.0.0"
    assert versions["old_spawners"] == [{"version": "0.1.0", "pid": old.pid, "instances": 2}]
    text = orch("status", "-c", str(master.config)).stdout
    assert f"spawner: orch 2.0.0, and spawner {old.pid} of orch 0.1.0 for its 2 instances" in text, text
    # a further upgrade (same protocol) carries both spawners on
    set_version(tree, "3.0.0")
    again = orch("upgrade", "-c", str(master.config), timeout=60)
    assert again.returncode == 0 and "now runs orch 3.0.0 (was 2.0.0)" in again.stdout, again.stderr
    assert {p.pid for p in spawners(master)} == {old.pid, new.pid}, "a spawner was replaced"
    assert master.call("status")["versions"]["old_spawners"] == [{"version": "0.1.0", "pid": old.pid, "instances": 2}]
    assert fleet(master) == before, "an instance was restarted by the second upgrade"

    # a killed old instance comes back on the new spawner; the old one keeps the other
    os.kill(before["ticker"][0], signal.SIGKILL)
    wait_replaced(master, "ticker", before["ticker"][0], 10)
    replaced = master.status()["ticker"]["pid"]
    wait_for(lambda: psutil.Process(replaced).ppid() == new.pid, 5, message="the new spawner to be its parent")
    assert old.is_running() and master.call("status")["versions"]["old_spawners"][0]["instances"] == 1

    # the last old instance, stopped through the old spawner: it exits, and its guard with it
    restarted = orch("restart", "ticker-1", "-c", str(master.config))
    assert restarted.returncode == 0, restarted.stderr
    assert "SIGNAL 15" in (master.log_dir / "ticker-1.log").read_text()
    gone, left = psutil.wait_procs([old, old_guard], timeout=10)
    assert not left, f"the old spawner or its guard still runs: {left}"
    assert psutil.Process(master.status()["ticker-1"]["pid"]).ppid() == new.pid
    status = master.call("status")
    assert status["versions"]["old_spawners"] == [] and status["pid"] == master.pid
    assert master.terminate() == 0


def wait_replaced(master, name: str, old: int, timeout: float) -> None:
    """Wait until `name` runs again under a pid other than `old`."""
    wait_for(lambda: master.status()[name]["pid"] not in (None, old) and master.status()[name]["state"] == "running",
             timeout, message=f"{name} to be replaced")


def parent_of(pid: int | None) -> int | None:
    """The parent of a running `pid`; None for no pid or one that has already ended."""
    try:
        return psutil.Process(pid).ppid() if pid else None
    except psutil.NoSuchProcess:
        return None


@pytest.mark.slow
def test_a_sigkilled_master_with_children_on_three_spawners_leaves_nothing(start_master, tmp_path, monkeypatch):
    master, before, old, old_guard, new, tree = upgraded(start_master, tmp_path, monkeypatch)
    os.kill(before["ticker"][0], signal.SIGKILL)
    wait_replaced(master, "ticker", before["ticker"][0], 10)
    assert psutil.Process(master.pids()["ticker"]).ppid() == new.pid
    assert psutil.Process(master.pids()["ticker-1"]).ppid() == old.pid
    # the protocol changes again: the running spawner joins the old one beside a third
    request = tree / "orchestrator" / "spawn" / "request.py"
    request.write_text(request.read_text().replace("PROTOCOL = 2\n", "PROTOCOL = 3\n"))
    set_version(tree, "3.0.0")
    again = orch("upgrade", "-c", str(master.config), timeout=60)
    assert again.returncode == 0 and "now runs orch 3.0.0 (was 2.0.0)" in again.stdout, again.stderr
    third = wait_for(lambda: next((p for p in spawners(master) if p.pid not in (old.pid, new.pid)), None), 10,
                     message="a third spawner")
    assert [(o["version"], o["pid"], o["instances"]) for o in master.call("status")["versions"]["old_spawners"]] \
        == [("0.1.0", old.pid, 1), ("2.0.0", new.pid, 1)]
    new_guard = guard_of(new)
    os.kill(master.pids()["ticker"], signal.SIGKILL)  # its exit comes through the second spawner, its last
    wait_for(lambda: parent_of(master.pids()["ticker"]) == third.pid, 10,  # the killed pid until its exit is read
             message="ticker on the third spawner")
    gone, left = psutil.wait_procs([new, new_guard], timeout=10)
    assert not left, "the second spawner outlived its last child"
    assert [o["pid"] for o in master.call("status")["versions"]["old_spawners"]] == [old.pid]
    watched = [old, old_guard, third, guard_of(third), *(psutil.Process(pid) for pid in master.pids().values())]
    os.kill(master.pid, signal.SIGKILL)
    master.proc.wait(5)
    gone, left = psutil.wait_procs(watched, timeout=15)
    assert not left, f"still running after the master's SIGKILL: {[(p.pid, p.cmdline()) for p in left]}"


@pytest.mark.slow
def test_a_graceful_stop_with_children_on_both_spawners_ends_them_all(start_master, tmp_path, monkeypatch):
    (tmp_path / "prew.py").write_text(PRELOADED)
    master, before, old, old_guard, new, tree = upgraded(start_master, tmp_path, monkeypatch, PRELOADED_WORKER)
    os.kill(before["pre"][0], signal.SIGKILL)  # a zygote's worker: its exit comes through the old spawner
    wait_replaced(master, "pre", before["pre"][0], 15)
    assert new.pid in [p.pid for p in psutil.Process(master.pids()["pre"]).parents()]
    watched = [old, old_guard, new, guard_of(new), *(psutil.Process(pid) for pid in master.pids().values())]
    assert master.terminate() == 0
    gone, left = psutil.wait_procs(watched, timeout=10)
    assert not left, f"still running after a graceful stop: {[(p.pid, p.cmdline()) for p in left]}"


@pytest.mark.slow
def test_an_old_spawner_killed_from_outside_takes_only_its_own_children(start_master, tmp_path, monkeypatch):
    master, before, old, old_guard, new, tree = upgraded(start_master, tmp_path, monkeypatch)
    os.kill(before["ticker"][0], signal.SIGKILL)
    wait_replaced(master, "ticker", before["ticker"][0], 10)
    moved = master.pids()["ticker"]
    old.kill()  # its guard ends ticker-1; the master counts it as SIGKILLed and starts it anew
    wait_replaced(master, "ticker-1", before["ticker-1"][0], 10)
    assert psutil.Process(master.pids()["ticker-1"]).ppid() == new.pid
    assert master.pids()["ticker"] == moved, "the new spawner's child was taken too"
    assert not psutil.pid_exists(before["ticker-1"][0]) or psutil.Process(before["ticker-1"][0]).status() == "zombie"
    old_guard.wait(10)
    status = master.call("status")
    assert status["versions"]["old_spawners"] == []
    assert {r["name"]: r["last_exit"] for r in status["instances"]}["ticker-1"] == "SIGKILL"
    assert master.terminate() == 0


@pytest.mark.slow
def test_a_new_spawner_that_dies_brings_every_instance_back_on_a_third(start_master, tmp_path, monkeypatch):
    master, before, old, old_guard, new, tree = upgraded(start_master, tmp_path, monkeypatch)
    os.kill(before["ticker"][0], signal.SIGKILL)
    wait_replaced(master, "ticker", before["ticker"][0], 10)
    moved = master.pids()["ticker"]
    new.kill()  # as when the only spawner dies: every instance starts again, on a fresh spawner

    def again() -> dict | None:
        try:
            rows = master.status()
        except TimeoutError:  # a loaded machine: the master is busy bringing the fleet back
            return None
        fresh = all(r["state"] == "running" and r["pid"] not in (moved, before["ticker-1"][0]) for r in rows.values())
        return rows if fresh else None
    wait_for(again, 30, message="both instances running again")
    third = wait_for(lambda: next((p for p in spawners(master) if p.pid not in (old.pid, new.pid)), None), 5,
                     message="a third spawner")
    for pid in master.pids().values():
        assert psutil.Process(pid).ppid() == third.pid
    gone, left = psutil.wait_procs([old, old_guard], timeout=10)
    assert not left, "the old spawner outlived its last child"
    assert master.call("status")["versions"]["old_spawners"] == []
    assert master.terminate() == 0
