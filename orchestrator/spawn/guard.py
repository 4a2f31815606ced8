"""The guard: ends the spawner's children when the spawner dies, however it dies.

The spawner starts most children with posix_spawn (the kernel's vfork: the spawner's memory
is neither copied nor touched, much cheaper per child than fork; see bench/). Such a child
cannot arm PR_SET_PDEATHSIG, which only the child itself can call between fork and exec.

So the spawner starts this guard once: a `/bin/sh` (about 1 MiB) reading a pipe whose only
writer is the spawner. A clean stop writes "x" once the spawner has ended every tree itself,
and the shell exits. EOF without it means the spawner died (SIGKILLed, or with a SIGKILLed
master through its own PDEATHSIG): the shell notes the time and execs
`python -m orchestrator.spawn.guard`, which SIGKILLs every process of the run that started
before that time: those carrying the run's cookie (ORCH_RUN), and every session and process
group of a main process in the master's state file (written within 50 ms of each start),
with the start-time and pidfd checks of orphans.end_record. The time bound spares the
fleet a surviving master starts again under the same cookie.

The guard has a process group of its own, so `kill -9 -PGID` of the master's group (a shell's
job control, a supervisor's kill-as-group) leaves it to clean up, and it inherits the
spawner's ignored signals. A guard killed from outside is started again by the spawner.
Only a kill of the guard with the master and spawner (the OOM killer taking all three)
leaves the sweep to the next `orch up`, which reads the same state file.
"""

from __future__ import annotations

import os
import sys

# $0 is the Python to sweep with; $1.. are main()'s arguments but the last, the time of EOF.
SCRIPT = ('read -r line; [ "$line" = x ] && exit 0; read -r up idle < /proc/uptime; '
          'exec "$0" -m orchestrator.spawn.guard "$@" "$up"')


def start_guard(run: str, since: int | None, state: str | None) -> tuple[int, int]:
    """posix_spawn the guard (in the spawner); returns (pid, the write end of its pipe,
    close-on-exec, so no child holds it open)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", SCRIPT, sys.executable, run, str(since or 0), state or ""],
                             dict(os.environ), file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)],
                             setpgroup=0)  # a kill of the master's process group spares it
    finally:
        os.close(read_end)
    return pid, write_end


def main(argv: list[str]) -> int:  # pragma: no cover - runs in the guard, after the spawner died
    """RUN SINCE STATE UPTIME: SIGKILL what the dead spawner's run left, started before UPTIME."""
    import json
    from .orphans import end_record
    run, since, state, uptime = argv
    record: dict = {}
    if state:
        try:
            with open(state, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = {}
    if record.get("run") != run:
        record = {}  # another run's file (or none): the cookie alone
    record.pop("spawner", None)  # dead; its pid may be anyone's by now
    record["run"] = run
    record["run_start"] = record.get("run_start") or int(since)
    until = int(float(uptime) * os.sysconf("SC_CLK_TCK"))
    end_record(record, "by the dead spawner", 2.0, until=until)
    from .cgroups import sweep_run
    sweep_run(run)  # cgroup = "auto": what the cookie did not name, and the cgroups themselves
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
