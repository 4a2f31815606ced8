"""File descriptor limits: the master raises its own, children keep the usual one (also
after a spawner is replaced), and the /proc fds kept for sampling never take the last free
fds, which control connections and new instances need."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from conftest import wait_for


def may_lift_the_hard_limit() -> bool:
    """Whether a process here may raise its hard RLIMIT_NOFILE (CAP_SYS_RESOURCE)."""
    probe = ("import resource; h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
             "resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 19, 1 << 19)) if h < 1 << 19 else None")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def open_files(pid: int) -> tuple[str, str]:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no 'Max open files' line")


def test_the_master_raises_its_limit_and_children_keep_the_usual_one_after_a_new_spawner(start_master):
    ours = open_files(os.getpid())
    master = start_master("""
        [workers.w]
        command = ["sleep", "60"]
        replicas = 2
        """)
    before = master.wait_running(2)
    soft, hard = open_files(master.pid)
    assert int(soft) >= int(ours[0]) and int(hard) >= int(ours[1])
    if may_lift_the_hard_limit():
        assert int(hard) >= 1 << 19
    else:
        assert hard == ours[1] and soft == hard
    assert {open_files(pid) for pid in before.values()} == {ours}
    spawner = next(p for p in master.descendants() if "spawner" in " ".join(p.cmdline()))
    os.kill(spawner.pid, signal.SIGKILL)

    def fresh():
        rows = master.status()
        pids = [r["pid"] for r in rows.values() if r["state"] == "running" and r["pid"] not in before.values()]
        return pids if len(pids) == 2 else None
    for pid in wait_for(fresh, 10, message="the fleet under a new spawner"):
        assert open_files(pid) == ours, "a replacement spawner passed the master's raised limit on"


def test_kept_proc_fds_leave_the_last_fds_free_and_sampling_still_reads_every_tree():
    script = textwrap.dedent("""
        import os, resource, subprocess
        from orchestrator.procfs import KEEP_FREE_MIN, TreeSampler, kept_fd_ceiling
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        kids = [subprocess.Popen(["sleep", "30"]) for _ in range(150)]  # 3 fds each: far past 256
        sampler = TreeSampler()
        try:
            for kid in kids:
                sampler.track(kid.pid)
            sizes = [sampler.memory(kid.pid, look=False) for kid in kids]
            kept = [fd for pair in sampler._fds.values() for fd in pair if fd >= 0]
            kept += [fd for fd in sampler._statm.values() if fd >= 0]
            spare = []
            for _ in range(KEEP_FREE_MIN - 8):  # what a control connection or a new pipe needs
                spare.append(os.open("/dev/null", os.O_RDONLY))
            print(len(kept), max(kept), kept_fd_ceiling(), min(sizes), len(spare))
        finally:
            for kid in kids:
                kid.kill()
                kid.wait()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kept, highest, ceiling, smallest, spare = map(int, out.stdout.split())
    assert 0 < kept and highest < ceiling <= 256 - 64
    assert smallest > 100_000  # every sleep read, kept fd or not


def test_log_files_past_the_ceiling_are_written_and_closed_so_no_line_is_lost(tmp_path):
    script = textwrap.dedent(f"""
        import os, resource
        from pathlib import Path
        from orchestrator.observe.logs import LogFile
        from orchestrator.procfs import KEEP_FREE_MIN
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        logs = [LogFile(Path({str(tmp_path)!r}) / f"w{{i}}.log", 0, 0) for i in range(400)]
        for round in range(2):
            for i, log in enumerate(logs):
                log.write(f"line {{round}} of {{i}}\\n".encode())
        spare = [os.open("/dev/null", os.O_RDONLY) for _ in range(KEEP_FREE_MIN - 8)]
        print(len(spare))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for i in range(400):
        assert (tmp_path / f"w{i}.log").read_text() == f"line 0 of {i}\nline 1 of {i}\n"
