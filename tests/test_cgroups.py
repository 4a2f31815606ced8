"""cgroup = "auto": instances with a memory limit in cgroups of their own (spawn/cgroups.py,
supervise/kernel_memory.py). Pure parts by tables; then real masters, real processes and the
kernel's own memory accounting: a hard limit acted on through the kernel's OOM state, a soft
one through a usage threshold, an escaped grandchild ended with its instance, and nothing
left in cgroupfs after `orch down`, a SIGKILLed master, or a SIGKILLed master and spawner."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import textwrap

import psutil
import pytest

from conftest import alive, kill_master_spawner_and_guard, spawner_of, wait_for
from orchestrator.spawn import cgroups
from orchestrator.supervise.kernel_memory import under_oom, working_set

PY = sys.executable
THIS_HOST = ("9:name=systemd:/\n4:memory:/process_api/f1fa\n0::/\n",
             "35 24 0:30 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory\n"
             "40 24 0:35 / /sys/fs/cgroup/unified rw,relatime shared:17 - cgroup2 cgroup2 rw\n")


@pytest.mark.parametrize("proc_cgroup, mountinfo, expected", [
    (*THIS_HOST, ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/memory/process_api/f1fa")),
    ("0::/system.slice/orch.service\n",  # a pure v2 host under systemd (Delegate=yes)
     "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
     ("/sys/fs/cgroup/system.slice/orch.service", None)),
    ("0::/docker/abc/sub\n",  # a container without a cgroup namespace: the mount shows a subtree
     "900 800 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", ("/sys/fs/cgroup/sub", None)),
    ("0::/elsewhere\n", "900 800 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", (None, None)),
    ("4:cpu,memory:/a b\n",  # controllers mounted together; an escaped space in a mount point
     "35 24 0:30 / /sys/fs/cg\\040x rw - cgroup cgroup rw,cpu,memory\n", (None, "/sys/fs/cg x/a b")),
    ("", "", (None, None)),
])
def test_the_layout_is_read_from_proc(proc_cgroup, mountinfo, expected):
    assert tuple(cgroups.parse_layout(proc_cgroup, mountinfo)) == expected


@pytest.mark.parametrize("name, token, expected", [
    ("web-0", 7, "i-web-0-7"),
    ("db:5432/x", 1, "i-db%3A5432%2Fx-1"),  # never a path separator
    ("cgroup.procs", 2, "i-cgroup.procs-2"),  # never one of the kernel's files
])
def test_leaf_names_are_file_safe_and_per_start(name, token, expected):
    assert cgroups.leaf_name(name, token) == expected


def test_a_join_plan_sets_the_hard_limit_only_where_the_memory_controller_is():
    both = cgroups.join_plan(cgroups.Layout("/u/orch-r", "/m/orch-r"), "w", 3, 1 << 20)
    assert both == cgroups.Join(("/u/orch-r/i-w-3", "/m/orch-r/i-w-3"),
                                (("/m/orch-r/i-w-3/memory.limit_in_bytes", str(1 << 20)),))
    assert cgroups.join_plan(cgroups.Layout("/u/orch-r", None), "w", 3, 1 << 20) == \
        cgroups.Join(("/u/orch-r/i-w-3",), ())
    v1 = cgroups.join_plan(cgroups.Layout(None, "/m/orch-r"), "w", 3, None)
    assert v1 == cgroups.Join(("/m/orch-r/i-w-3",), (), per_thread=True), "a spawner thread may join it"


@pytest.mark.parametrize("usage, stat, expected", [
    (100, "cache 50\ntotal_inactive_file 30\n", 70),
    (100, "anon 10\ninactive_file 90\n", 10),  # v2's memory.stat
    (100, "total_rss 100\n", 100),
    (10, "total_inactive_file 30\n", 0),
])
def test_the_working_set_leaves_out_inactive_file_cache(usage, stat, expected):
    assert working_set(usage, stat) == expected


@pytest.mark.parametrize("text, expected", [
    ("oom_kill_disable 1\nunder_oom 1\noom_kill 0\n", True),
    ("oom_kill_disable 1\nunder_oom 0\noom_kill 0\n", False),
    ("", False),
])
def test_under_oom(text, expected):
    assert under_oom(text) is expected


# --- real masters -------------------------------------------------------------------------
def require_cgroups() -> cgroups.Layout:
    layout = cgroups.detect()
    if layout.unified is None or layout.memory is None or not os.access(layout.memory, os.W_OK):
        pytest.fail(f"these tests need a writable cgroup2 hierarchy and v1 memory controller (as root): {layout}")
    return layout


def run_dirs(master) -> list[str]:
    """The run's cgroup directories, named by its state file: written about 50 ms after a
    start, so it is waited for (a test read it before the first write)."""
    state = master.pidfile.with_name(master.pidfile.name + ".state")
    record = wait_for(lambda: state.exists() and json.loads(state.read_text()), 5, message="the state file")
    return cgroups.run_paths(cgroups.detect(), record["run"])


def gone(paths: list[str]) -> bool:
    return not any(os.path.exists(p) for p in paths)


GROW = textwrap.dedent("""
    import pathlib, sys, time
    if pathlib.Path("grown").exists():
        time.sleep(1000)               # the replacement stays small
    pathlib.Path("grown").write_text("1")
    block = bytearray(int(sys.argv[1]) << 20); block[::4096] = b"x" * len(block[::4096])
    time.sleep(1000)
""")
MARK = str(90_000 + os.getpid() % 10_000)  # this test run's own escaped daemons, never another's
ESCAPE = f"(setsid env -i /bin/sleep {MARK} >/dev/null 2>&1 &) ; exec sleep 1000"


def escaped() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["/bin/sleep", MARK]]


def test_over_the_hard_limit_the_kernel_holds_it_and_the_tree_is_killed(start_master, tmp_path):
    require_cgroups()
    master = start_master(f"""
        [workers.grow]
        command = {json.dumps([PY, "-c", GROW, "120"])}
        memory = {{ hard = "60MiB" }}
        min_uptime = "0s"
    """)
    first = master.wait_running(1)["grow"]
    row = wait_for(lambda: (r := master.status()["grow"])["reason"] == "memory_hard" and r["pid"] != first
                   and r["state"] == "running" and r, 10, message="grow recycled for memory_hard")
    assert row["last_exit"] == "SIGKILL" and row["limit_kills"] == {"memory_hard": 1}
    assert "the kernel holds its allocations at 60.0M (cgroup" in master.stderr(), master.stderr()
    paths = run_dirs(master)
    limit = os.path.join(paths[-1], cgroups.leaf_name("grow", 2), "memory.limit_in_bytes")
    assert int(open(limit).read()) == 60 << 20, "the new start has its own cgroup with the limit"
    assert master.terminate() == 0
    assert gone(paths), "orch down leaves no cgroup behind"


def test_over_the_soft_limit_a_usage_threshold_wakes_the_master(start_master, tmp_path):
    require_cgroups()
    master = start_master(f"""
        [orchestrator]
        check_interval = "100ms"
        [workers.grow]
        command = {json.dumps([PY, "-c", GROW, "80"])}
        memory = {{ soft = "40MiB", hard = "400MiB" }}
        min_uptime = "0s"
        [workers.quiet]
        command = ["sleep", "1000"]
        memory = {{ soft = "40MiB" }}
    """)
    master.wait_running(2)
    wait_for(lambda: master.status()["grow"]["reason"] == "memory_soft", 10, message="grow recycled")
    assert re.search(r"grow\[\d+\] memory_soft \(working set [\d.]+M over 40.0M \(cgroup\)\)", master.stderr())
    assert master.status()["quiet"]["restarts"] == 0


def test_an_escaped_grandchild_ends_with_its_instance(start_master):
    """A daemon that leaves its session and clears its environment: without a cgroup it would
    outlive its instance (README, "The limit"); its cgroup holds it."""
    require_cgroups()
    master = start_master(f"""
        [workers.esc]
        command = ["sh", "-c", "{ESCAPE}"]
        memory = {{ hard = "200MiB" }}
    """)
    master.wait_running(1)
    pids = wait_for(escaped, 5, message="the escaped daemon")
    assert b"ORCH_RUN=" not in open(f"/proc/{pids[0]}/environ", "rb").read(), "no cookie to find it by"
    master.call("stop", patterns=["esc"])
    wait_for(lambda: not any(alive(pid) for pid in pids), 5, message="the escaped daemon ended with esc")
    wait_for(lambda: "esc: ending 1 processes left in its cgroup" in master.stderr(), 5,
             message="the master saying it ended what was left in the cgroup")


@pytest.mark.parametrize("kill", ["master", "master and spawner"])
def test_nothing_is_left_after_a_sigkill(start_master, kill):
    require_cgroups()
    master = start_master(f"""
        [workers.esc]
        command = ["sh", "-c", "{ESCAPE}"]
        memory = {{ hard = "200MiB" }}
    """)
    master.wait_running(1)
    pids = wait_for(escaped, 5, message="the escaped daemon")
    paths = [p for p in run_dirs(master) if os.path.isdir(p)]
    assert paths, "the run has its cgroups"
    if kill == "master":  # the spawner sweeps the run's cgroups as it goes
        os.kill(master.pid, signal.SIGKILL)
    else:  # both at once: the guard does
        spawner = spawner_of(master)
        os.killpg(master.pid, signal.SIGKILL)
        spawner.wait(5)
    wait_for(lambda: gone(paths) and not any(alive(pid) for pid in pids), 10,
             message=f"the run's cgroups and the escaped daemon gone after a SIGKILL of the {kill}")


def test_cgroup_off_samples_and_makes_no_cgroup(start_master):
    require_cgroups()
    master = start_master("""
        [orchestrator]
        cgroup = "off"
        [workers.w]
        command = ["sleep", "1000"]
        memory = { hard = "200MiB" }
    """)
    pid = master.wait_running(1)["w"]
    own = open(f"/proc/{pid}/cgroup").read()
    assert "orch-" not in own, own


def test_a_reload_that_lowers_the_limits_in_place_moves_the_kernels_threshold(start_master):
    require_cgroups()
    config = """
        [orchestrator]
        check_interval = "100ms"
        [workers.grow]
        command = {command}
        memory = {{ soft = "{soft}", hard = "500MiB" }}
        min_uptime = "0s"
    """
    command = json.dumps([PY, "-c", GROW, "80"])
    master = start_master(config.format(command=command, soft="400MiB"))
    first = master.wait_running(1)["grow"]
    wait_for(lambda: os.path.exists(master.folder / "grown"), 5, message="grown")
    master.write(config.format(command=command, soft="40MiB"))
    master.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: (r := master.status()["grow"])["reason"] == "memory_soft" and r["pid"] not in (None, first)
             and r["state"] == "running", 10, message="a recycle for the lowered soft limit")
    assert re.search(r"memory_soft \(working set [\d.]+M over 40.0M \(cgroup\)\)", master.stderr())


def test_a_run_directory_names_its_master():
    name = cgroups.run_name("ab12", (4321, 987654))
    assert name == "orch-4321.987654-ab12" and name.endswith(cgroups.run_name("ab12"))
    assert cgroups.run_owner(name) == (4321, 987654)
    assert cgroups.run_owner("orch-ab12") is None and cgroups.run_owner("i-web-3") is None


@pytest.fixture
def own_cgroups():
    """This test's masters in cgroups of their own, beside no other test's: a master sweeps
    every dead run beside its cgroups, and on a busy machine other tests' masters die all the
    time (their teardown SIGKILLs them), so a concurrent master could sweep this test's dead
    run first, or this test's master count another's too. Request it before start_master."""
    bases = [base for base in require_cgroups() if base is not None]
    homes = [os.path.join(base, f"orch-test-{os.getpid()}") for base in bases]
    for home in homes:
        os.makedirs(home, exist_ok=True)
        cgroup_procs(home, os.getpid())  # the masters started now are born in it
    try:
        yield homes
    finally:
        for base in bases:
            cgroup_procs(base, os.getpid())
        cgroups.sweep(homes, 10.0)
        assert gone(homes), f"the test's own cgroups left behind: {homes}"


def cgroup_procs(path: str, pid: int) -> None:
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def test_the_next_limited_master_sweeps_what_a_triple_kill_left(own_cgroups, start_master, tmp_path):
    """Master, spawner and guard killed at once (the OOM killer): nobody is left to clean up,
    so the next master that makes cgroups removes the dead run's, beside its own."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    text = f"""
        [workers.esc]
        command = ["sh", "-c", "{ESCAPE}"]
        memory = {{ hard = "200MiB" }}
    """
    first = start_master(text, name="a/workers.toml")
    first.wait_running(1)
    pids = wait_for(escaped, 5, message="the escaped daemon")
    paths = [p for p in run_dirs(first) if os.path.isdir(p)]
    assert paths and all(os.path.dirname(p) in own_cgroups for p in paths), paths
    kill_master_spawner_and_guard(first)
    wait_for(lambda: not alive(first.pid), 5, message="the first master gone")
    for pid in pids:  # what the sweep by cookie would not find: left for the cgroup sweep
        assert alive(pid), "the escaped daemon outlived the triple kill"
    second = start_master(text, name="b/workers.toml")
    second.wait_running(1)
    wait_for(lambda: gone(paths) and not any(alive(pid) for pid in pids), 10,
             message=f"the dead run's cgroups and their escaped daemon gone: {paths} {second.stderr()}")
    assert "ending what is left in 1 cgroups of dead runs" in second.stderr()
