"""`orch upgrade` (and SIGUSR2): the master re-executes itself, same pid, into the orch the
environment now has, and hands its successor everything across exec.

- `state.py`   the versioned JSON record of the fleet (pure): what each instance is and
               when its timers fire; older records are upgraded, newer ones refused.
- `carry.py`   the fds that cross exec (sockets, spawner, log pipes, pidfile lock) and the
               memfd that carries the record.
- `proof.py`   the proof: the new code, in a child, imports all of orch, loads and expands
               the config and reads the record, before anything changes (`--check` stops there).
- `upgrade.py` the old master's side: wait for a quiet moment, prove, drain, exec.
- `capture.py` the old master as a record: instances, rollouts in progress, probe counts,
               waiting commands and `orch events -f` streams, and the fds that go with them.
- `drain.py`   before exec: the servers stop accepting, answer what they accepted (1 s at
               most) and close the rest without a reset.
- `resume.py`  the new master's side: rebuild the master from the record and carry on.
"""
