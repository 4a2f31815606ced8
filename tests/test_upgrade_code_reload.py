"""`orch upgrade` (SIGUSR2) while `orch reload --code` rolls preloaded workers onto a fresh
zygote (issue 30): the roll crosses the exec and goes on under the new master, each instance
rolled exactly once onto the new code, and the old zygote goes with its last worker; a halt
under the new master still sends new processes back to the old code. And instances a carried
rollout (or a reload's restart) has not restarted yet show the spec they run, not the new
one. Real masters, a copy of the package with another version first on PYTHONPATH."""

from __future__ import annotations

import json
import os
import re
import textwrap
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.handover.specs import decode, encode
from orchestrator.handover.state import VERSION, HandoverError, migrate

from conftest import orch, text_of, wait_for
from test_code_reload import _zygotes
from test_upgrade import SLOW_TO_READY, package_copy, set_version, slow_config

PY = sys.executable

# Each process says which code its zygote imported. A v2 process after the first waits in
# init() (so it is not ready: no READY=1) until the test opens the gate: the roll is held
# mid-way, one instance already on the new code, for as long as the upgrade takes; or, once
# `die` exists, dies before it is ready, which halts the roll.
WORKER = '''import os, time
from orchestrator.worker import Worker
VERSION = "{version}"
HERE = os.path.dirname(os.path.abspath(__file__))
time.sleep({import_seconds} if VERSION == "v2" else 0)  # a slow import of the new code


def _nth_start():
    n = 0
    while True:
        try:
            os.close(os.open(os.path.join(HERE, "v2-%d" % n), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return n
        except FileExistsError:
            n += 1


class W(Worker):
    def init(self):
        print("code", VERSION, os.getpid(), flush=True)
        if VERSION == "v2" and _nth_start() >= {hold_from}:
            while not os.path.exists(os.path.join(HERE, "go")):
                if os.path.exists(os.path.join(HERE, "die")):
                    raise SystemExit(7)
                time.sleep(0.02)

    def run(self):
        time.sleep(0.05)
'''


def _config(tmp_path: Path) -> str:
    return f"""
        [orchestrator]
        watch = false
        [workers.w]
        target = "app:W"
        preload = true
        cwd = "{tmp_path}"
        replicas = 4
        max_unavailable = 1
        min_uptime = 600  # ready at READY=1 (after init) only
        stop_timeout = 5
        """


def _codes(master, names) -> dict[str, list[tuple[str, int]]]:
    """name -> the (version, pid) of each process its log says it ran."""
    logs = {name: text_of(master.log_dir / f"{name}.log") for name in names}
    return {name: [(v, int(pid)) for v, pid in re.findall(r"^code (v\d) (\d+)$", text, re.M)]
            for name, text in logs.items()}


def _rolling(tmp_path: Path, monkeypatch, start_master, hold_from: int, import_seconds: float = 0,
             copy: bool = True):
    """A master of 4 preloaded workers on v1 whose `orch reload --code` (waiting) is under
    way with one instance ready on v2 and the next held in its init until `go` exists (or,
    with `import_seconds`, whose new code is still importing); with `copy`, orch runs from a
    copy of the package whose version is 9.9.9 once the roll is under way."""
    tree = package_copy(tmp_path) if copy else None
    if tree is not None:
        monkeypatch.setenv("PYTHONPATH", str(tree))
    app = tmp_path / "app.py"
    app.write_text(WORKER.format(version="v1", hold_from=hold_from, import_seconds=import_seconds))
    master = start_master(_config(tmp_path))
    before = master.wait_running(4, timeout=30)
    wait_for(lambda: all(_codes(master, before)[n] == [("v1", pid)] for n, pid in before.items()), 10,
             message="every worker on v1")
    first = wait_for(lambda: len(z := _zygotes(master)) == 1 and z, 5, message="one zygote")
    app.write_text(WORKER.format(version="v2", hold_from=hold_from, import_seconds=import_seconds))
    reload = subprocess.Popen([PY, "-m", "orchestrator", "reload", "--code", "template:w", "-c", str(master.config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if import_seconds:
        wait_for(lambda: "new zygotes importing" in master.stderr(), 10, message="the new code importing")
    else:
        wait_for(lambda: (r := master.call("status")["rollouts"]) and r[0]["done"] >= 1, 20,
                 message="the roll onto the new code under way, one instance done")
    if tree is not None:
        set_version(tree, "9.9.9")  # what `pip install -U` would have done
    return master, before, first, reload


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["rolling", "importing"])
def test_sigusr2_mid_code_reload_carries_the_roll_onto_the_new_code(start_master, tmp_path, monkeypatch, moment):
    """SIGUSR2 while the roll is held mid-way (one instance on the new code), or while the
    new code still imports (the upgrade waits for the import, then carries the roll, which
    is held mid-way again: the old master would have refused after 10 s)."""
    importing = moment == "importing"
    master, before, first, reload = _rolling(tmp_path, monkeypatch, start_master, 1, 1.5 if importing else 0)
    try:
        if not importing:
            rolling = master.call("status")["rollouts"]
            assert [r["label"] for r in rolling] == ["template:w onto new code"] and rolling[0]["done"] < 4, rolling
        os.kill(master.pid, signal.SIGUSR2)
        wait_for(lambda: "(upgrade 1)" in master.stderr(), 60, message="the new master to take over")
        assert master.call("status")["versions"]["master"] == "9.9.9"
        log = master.stderr()
        carried = re.search(r"rolling restart of template:w onto new code goes on: (\d) of 4 instances left", log)
        assert carried and 1 <= int(carried[1]) <= (4 if importing else 3), log
        assert not importing or log.index("new code imported") < log.index("re-executes into"), log
        # the new master knows where the roll stands: one instance on the new code, one held
        wait_for(lambda: master.call("status")["rollouts"][0]["done"] == 1, 10, message="one instance rolled")
        text = orch("status", "-c", str(master.config)).stdout
        assert "rolling restart of template:w onto new code: 1 of 4 done" in text, text
        (tmp_path / "go").touch()
        out, err = reload.communicate(timeout=60)
    finally:
        reload.kill()
    assert reload.returncode == 0, out + err
    assert "4 running instances of 4 rolled onto it" in out, out
    wait_for(lambda: not master.call("status")["rollouts"], 20, message="the roll to end")
    rows = master.status()
    assert {n: (r["state"], r["restarts"], r["ready"]) for n, r in rows.items()} == \
        {n: ("running", 1, True) for n in before}, rows
    codes = _codes(master, before)
    for name, pid in before.items():  # each rolled exactly once, from v1 onto v2
        assert codes[name] == [("v1", pid), ("v2", rows[name]["pid"])], (name, codes[name])
    assert master.proc.poll() is None and "upgrade 1" in master.stderr()
    versions = master.call("status")["versions"]
    assert versions["master"] == "9.9.9" and versions["zygotes"] == versions["spawner"] == "0.1.0", versions
    wait_for(lambda: len(z := _zygotes(master)) == 1 and z != first, 10,
             message="the old zygote gone with its last worker")


@pytest.mark.slow
def test_a_carried_code_roll_that_halts_sends_new_processes_back_to_the_old_code(start_master, tmp_path,
                                                                                 monkeypatch):
    """The new code dies before it is ready under the new master: the carried roll halts, the
    instances not reached keep their old process, the one that died comes back on the old
    code (the new master sent the spawner back to the old zygote of the carried token)."""
    master, before, first, reload = _rolling(tmp_path, monkeypatch, start_master, hold_from=1, copy=False)
    try:
        os.kill(master.pid, signal.SIGUSR2)
        wait_for(lambda: "(upgrade 1)" in master.stderr(), 60, message="the new master to take over")
        (tmp_path / "die").touch()
        out, err = reload.communicate(timeout=60)
    finally:
        reload.kill()
    assert reload.returncode == 1 and "died before it was ready (exit 7)" in err, out + err
    assert "new processes fork from the old code again" in err, err
    wait_for(lambda: "the roll halted; new processes fork from the old code again" in master.stderr(), 10,
             message="the carried roll's halt")

    def back_on_v1() -> str | None:  # the instance that died, once up and ready on the old code again
        rows = master.status()
        return next((n for n, c in _codes(master, before).items() if [v for v, _ in c] == ["v1", "v2", "v1"]
                     and c[2][1] == rows[n]["pid"] and rows[n]["ready"]), None)
    failed = wait_for(back_on_v1, 20, message="the instance that died back up on the old code")
    codes, rows = _codes(master, before), master.status()
    rolled = [n for n, c in codes.items() if [v for v, _ in c] == ["v1", "v2"]]
    kept = {n: rows[n]["pid"] for n, c in codes.items() if len(c) == 1}
    assert len(rolled) == 1 and kept == {n: before[n] for n in kept} and len(kept) == 2, codes
    assert not master.call("status")["rollouts"] and master.proc.poll() is None
    assert codes[failed][2] == ("v1", rows[failed]["pid"]), codes
    wait_for(lambda: len(_zygotes(master)) == 2, 5,
             message="the old zygote (3 workers) and the new one (1) both serving")


@pytest.mark.slow
def test_instances_a_carried_reload_has_not_rolled_yet_show_the_spec_they_run(start_master, tmp_path):
    """A reload changed a `rolling` template's env; its rollout is held at the first batch
    (not ready until `go` exists) when the master upgrades: the instances not reached yet
    still show their old spec (hash) under the new master, as before the upgrade, and are
    restarted onto the new one by the rollout alone, once each."""
    (tmp_path / "slow.py").write_text(SLOW_TO_READY)
    master = start_master(slow_config(tmp_path, "one", gate=True))
    before = master.wait_running(4)
    starts = tmp_path / "starts"  # running is spawned: each process writes its line a moment later
    wait_for(lambda: len(starts.read_text().split()) == 4 if starts.exists() else False, 10, message="4 starts")
    old = {row["hash"] for row in master.status().values()}
    assert len(old) == 1
    master.config.write_text(textwrap.dedent(slow_config(tmp_path, "two", gate=True)))
    assert orch("reload", "-c", str(master.config)).returncode == 0
    wait_for(lambda: any(r["pid"] not in (None, before[n]) for n, r in master.status().items()), 10,
             message="the first batch restarted")
    rows = master.status()
    waiting = {n for n, r in rows.items() if r["pid"] == before[n]}
    assert len(waiting) == 3 and {rows[n]["hash"] for n in waiting} == old, rows
    upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    rows = master.status()
    assert {n: (r["pid"], r["hash"]) for n, r in rows.items() if n in waiting} == \
        {n: (before[n], *old) for n in waiting}, "an instance not rolled yet shows a spec it does not run"
    (tmp_path / "go").touch()
    wait_for(lambda: not master.call("status")["rollouts"], 30, message="the rollout to end")
    rows = master.status()
    assert len({r["hash"] for r in rows.values()}) == 1 and not {r["hash"] for r in rows.values()} & old, rows
    assert {n: r["restarts"] for n, r in rows.items()} == {n: 1 for n in before}, rows
    started = starts.read_text().split()
    assert [line.split(":")[1] for line in started] == ["one"] * 4 + ["two"] * 4, started


EVERY_KIND = """
[sockets.web]
bind = "127.0.0.1:18080"

[workers.py]
target = "app:W"
kwargs = {{ queue = "q{{{{ replica }}}}", opts = {{ a = [1, 2.5, "x"], b = true }} }}
preload = true
replicas = 2
env = {{ A = "1" }}
env_file = ["-/nonexistent.env"]
rlimits = {{ nofile = 1024 }}
umask = "022"
probes.readiness = {{ http = "http://127.0.0.1:18080/health", period = "1s" }}
probes.liveness = {{ exec = ["true"], period = "2s" }}

[workers.web]
command = "sleep 100 {{{{ sockets.web.fd }}}}"
sockets = ["web"]
group = "{group}"

[workers.auto]
command = "sleep 100"
replicas = {{ min = 1, max = 4 }}
backlog = {{ redis = "redis://127.0.0.1:1/0", list = "jobs", per = 100 }}
"""


def test_a_spec_crosses_the_record_as_it_was_and_an_older_record_gets_the_new_fields(tmp_path):
    import grp

    from orchestrator.config.load import load_config
    from orchestrator.expand.render import expand
    config = tmp_path / "workers.toml"
    config.write_text(EVERY_KIND.format(group=grp.getgrgid(os.getgid()).gr_name))
    specs = expand(load_config(config))
    assert {s.template for s in specs if s.probes and s.python and s.env_files and s.rlimits} == {"py"}
    assert all(s.run_as for s in specs if s.template == "web") and all(s.autoscale for s in specs
                                                                        if s.template == "auto")
    for spec in specs:
        again = decode(json.loads(json.dumps(encode(spec))))
        assert again == spec and again.process_hash == spec.process_hash, spec.name
    both = decode(json.loads(json.dumps(encode(specs))))  # one table of parts: shared parts stay shared
    assert both == specs and both[0].policy is both[1].policy
    saved = encode(specs[0])
    saved["parts"][-1]["gone"] = 1  # the spec itself, written last: a field this orch lacks
    with pytest.raises(HandoverError, match="ProcessSpec does not fit this orch's"):  # the proof refuses it
        decode(saved)
    with pytest.raises(HandoverError, match="unknown kind 'os:stat_result'"):
        decode({"value": {"@ref": 0}, "parts": [{"@class": "os:stat_result"}]})
    old = migrate({"version": 3, "orch": "0.1.0", "config": "/x", "quiet": True, "master": {}, "spawner": {},
                   "fds": {}, "pipes": [], "reply": None, "instances": [{"name": "a", "state": "running"}],
                   "rollouts": [{"label": "x", "batch": 1, "total": 1, "waiting": [], "in_flight": []}]})
    assert old["version"] == VERSION and old["rollouts"][0]["code"] is None and old["instances"][0]["spec"] is None


@pytest.mark.slow
def test_an_instance_stopping_to_restart_onto_a_new_spec_carries_both(start_master, tmp_path):
    """A reload changed a (not rolling) template's env and its process takes its time to stop
    (until `go` exists) when the master upgrades: it shows the spec it runs while it stops,
    and restarts once, onto the new one."""
    script = (f"trap 'while [ ! -e {tmp_path / 'go'} ]; do sleep 0.05; done; exit 0' TERM; "
              "echo up $RELEASE; while :; do sleep 0.05; done")

    def config(release: str) -> str:
        return f"""
            [orchestrator]
            watch = false
            [workers.slowstop]
            command = ["sh", "-c", "{script}"]
            env = {{ RELEASE = "{release}" }}
            stop_timeout = 60
            """
    master = start_master(config("one"))
    master.wait_running(1)
    log = master.log_dir / "slowstop.log"
    wait_for(lambda: "up one" in text_of(log), 10, message="its trap set")
    old = master.status()["slowstop"]
    master.config.write_text(textwrap.dedent(config("two")))
    assert orch("reload", "-c", str(master.config)).returncode == 0
    assert master.status()["slowstop"]["state"] == "stopping"
    upgrade = orch("upgrade", "-c", str(master.config), timeout=60)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    row = master.status()["slowstop"]
    assert (row["state"], row["pid"], row["hash"]) == ("stopping", old["pid"], old["hash"]), row
    (tmp_path / "go").touch()
    wait_for(lambda: "up two" in text_of(log), 20, message="the restart onto the new spec")
    row = master.status()["slowstop"]
    assert row["state"] == "running" and row["hash"] != old["hash"] and row["restarts"] == 1, row
    assert [line for line in text_of(log).splitlines() if line.startswith("up")] == ["up one", "up two"], text_of(log)
