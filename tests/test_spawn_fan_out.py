"""A large start is shared out over forked helpers, one per usable core (spawn/posix.py):
every child still ends up the spawner's own (reparented to it, its subreaper), no helper
outlives its batch, and a SIGKILLed master or spawner in the middle of one leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import ROOT, alive, spawner_of, wait_for
from orchestrator.spawn.posix import PARALLEL_FROM

# Runs as its own process: a child subreaper with a PosixStarter sharing one run of 2 *
# PARALLEL_FROM sleeps over one forked helper; prints what it saw as JSON.
SHARED_RUN = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from orchestrator.spawn.child import PR_SET_CHILD_SUBREAPER, prctl
    from orchestrator.spawn.posix import PosixStarter
    from orchestrator.spawn.request import SpawnRequest
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    forks, real_fork = [], os.fork
    def counted_fork():
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid
    os.fork = counted_fork
    devnull = os.open(os.devnull, os.O_RDWR)
    starter = PosixStarter(devnull)
    starter.fan_out = 2
    count = int(sys.argv[2])
    items = [(SpawnRequest(i, ("sleep", "1000"), {"PATH": os.environ["PATH"]}, False, "/", None, (), None,
                           "merge", None), devnull, devnull) for i in range(count)]
    pids = [pid for _, _, _, pid in starter.start_all(items)]
    print(json.dumps({"pids": pids, "forks": forks, "me": os.getpid()}), flush=True)
    sys.stdin.read()  # the test looks at our children now; EOF: end them
    for pid in pids:
        os.kill(pid, 9)
""")


def test_a_run_is_shared_with_a_forked_helper_whose_children_become_ours():
    count = 2 * PARALLEL_FROM
    proc = subprocess.Popen([sys.executable, "-c", SHARED_RUN, str(ROOT), str(count)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = json.loads(proc.stdout.readline())
        pids, me = seen["pids"], seen["me"]
        assert len(seen["forks"]) == 1, "one helper beside the process itself, on two cores"
        assert all(pids) and len(set(pids)) == count, f"every request started once: {pids}"
        assert not alive(seen["forks"][0]), "the helper was reaped before start_all returned"
        # The helper's children were reparented to us; its exit came first, so at once.
        assert {p.pid for p in psutil.Process(me).children()} == set(pids)
        assert all(psutil.Process(pid).ppid() == me for pid in pids)
    finally:
        proc.communicate("", timeout=10)
    wait_for(lambda: not any(alive(pid) for pid in pids), 5, message="the sleeps to end")


def _sleeps(marker: str) -> list[int]:
    """Our sleeps, told apart from every other test's by their unique argument."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["sleep", marker]:
            found.append(proc.pid)
    return found


@pytest.mark.slow
def test_a_large_start_leaves_every_instance_the_spawners_child_and_no_helper(start_master):
    marker = str(900000 + os.getpid() % 100000)
    master = start_master(f"""
        [workers.w]
        command = "sleep {marker}"
        replicas = 80
    """)
    pids = master.wait_running(80, timeout=30)
    spawner = spawner_of(master)
    assert {psutil.Process(pid).ppid() for pid in pids.values()} == {spawner.pid}
    others = [p for p in spawner.children() if p.pid not in set(pids.values())]
    assert all("guard" in " ".join(p.cmdline()) for p in others), f"a helper outlived its batch: {others}"
    os.kill(pids["w-7"], signal.SIGKILL)  # reaped by the spawner although a helper started it
    wait_for(lambda: (row := master.status()["w-7"])["state"] == "running" and row["pid"] != pids["w-7"], 10,
             message="w-7 replaced")
    assert master.terminate() == 0
    assert not _sleeps(marker)


@pytest.mark.slow
@pytest.mark.parametrize("victims", ["spawner", "master and spawner"])
def test_a_sigkill_in_the_middle_of_a_shared_start_leaves_nothing_behind(start_master, victims):
    """Killed while batches are shared out: the guard ends what the helpers started, reported
    or not; a surviving master brings back exactly one process per instance."""
    marker = str(800000 + os.getpid() % 100000)
    master = start_master(f"""
        [workers.w]
        command = "sleep {marker}"
        replicas = 300
    """, wait=False)
    wait_for(lambda: _sleeps(marker), 30, interval=0.005, message="the first sleeps")
    if victims == "spawner":
        spawner_of(master).kill()
        master.wait_running(300, timeout=60)  # perhaps still the first fleet: its death not yet read

        def one_sleep_per_instance() -> bool:
            pids = [row["pid"] for row in master.status().values() if row["state"] == "running"]
            return len(pids) == 300 and sorted(_sleeps(marker)) == sorted(pids)
        wait_for(one_sleep_per_instance, 30, interval=0.1,
                 message="exactly the fleet's 300 sleeps: none left from the killed spawner")
        assert master.terminate() == 0
    else:
        os.killpg(master.pid, signal.SIGKILL)  # master, spawner and any helper at once; the guard stays
        master.proc.wait(5)
    wait_for(lambda: not _sleeps(marker), 15, message="every sleep of the run to end")


def test_a_spawner_killed_while_the_first_batches_are_sent_is_replaced_without_a_traceback(tmp_path):
    """The master sends a start's first batches at once; a spawner SIGKILLed then makes the
    send fail with ECONNRESET or EPIPE (CI once saw `orch up` end with that traceback). The
    master must treat it as the spawner's death: a new one, and the whole fleet comes back."""
    config = tmp_path / "workers.toml"
    config.write_text('[workers.w]\ncommand = "sleep 600"\nreplicas = 400\n')
    err = open(tmp_path / "master.err", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-c", str(config), "--quiet"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        first = None
        deadline = time.monotonic() + 20
        while first is None and time.monotonic() < deadline:  # no sleep: as soon as it exists
            try:
                first = next(iter(psutil.Process(proc.pid).children()), None)  # its only child
            except psutil.Error:
                pass
        assert first is not None, "no spawner appeared"
        first.kill()
        def fleet():
            result = subprocess.run([sys.executable, "-m", "orchestrator", "status", "--json", "-c", str(config)],
                                    capture_output=True, text=True, timeout=20)
            return result.returncode == 0 and sum(r["state"] == "running" for r in json.loads(result.stdout)) == 400
        wait_for(fleet, 30, interval=0.3, message="the fleet back under a new spawner")
        assert proc.poll() is None
        text = (tmp_path / "master.err").read_text()
        assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
