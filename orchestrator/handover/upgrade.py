"""The old master's side of `orch upgrade` and SIGUSR2: refuse what cannot be carried, wait
for a quiet moment, prove the new code can take over, then exec into it (handover/).

Quiet means nothing is half-sent: no spawn waiting for its pid, no new code importing, no
hook running, no control command waiting for its answer (but those waiting on instances,
and `orch diff` and `orch reload` owed theirs, which are carried: capture.py). Those last
milliseconds, so the upgrade waits up to QUIET_WAIT for them, and for an import of new code as
long as that import may take (code_reload.py gives it up at its IMPORT_TIMEOUT). Everything
else is carried as it is: stops and restarts in progress, rolling restarts and code reloads'
rolls (the next master goes on with the batch where it stood: nothing restarts twice), a
reload's removals (their SIGKILL deadlines), a reload being expanded (abandoned at the
exec: the next master adopts the fleet from the config bytes this one applied, then runs
it again), a reload queued behind them, backoffs, crash loops and held instances. Once quiet, the servers
stop accepting and answer what they had accepted (drain.py), then the master execs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from .. import __version__
from ..supervise.probe_exec import ExecCheck
from ..supervise.states import State
from .carry import exec_successor, record_fd
from .drain import DRAIN, Drain
from .proof import Proof
from .state import spawner_protocol

log = logging.getLogger("orch")
QUIET_WAIT = 10.0  # seconds an upgrade waits for spawns, reloads and answers in flight
POLL = 0.02


class Upgrader:
    """At most one upgrade at a time; `request` answers through a control reply or the log."""

    def __init__(self, master: Any):
        self.master = master
        self.count = 0  # upgrades this master (this pid) has been through
        self.previous: str | None = None  # the orch version before the last upgrade
        self.spawner_version = __version__  # the code the current spawner (and its zygotes) run
        self.spawner_protocol = spawner_protocol()  # and the protocol it speaks
        self.beside: list[Any] = []  # beside.OldSpawner: older orchs' spawners, each until its last child exits
        self.proof: Proof | None = None
        self.drain: Drain | None = None  # the servers paused for the exec
        self._job: dict[str, Any] | None = None

    def request(self, check: bool, conn: Any = None, reply: Any = None) -> None:
        """Prove (and unless `check`, exec); `reply` (a control Pending) gets the outcome."""
        why = self._refused()
        if why:
            self._fail(reply, why)
            return
        self._job = {"check": check, "conn": conn, "reply": reply, "until": time.monotonic() + QUIET_WAIT}
        log.info("upgrade%s requested: waiting for a quiet moment, then proving the new code",
                 " --check" if check else "")
        self._when_quiet(self._prove)

    def spawner_replaced(self) -> None:
        """A new spawner started (the old one died): it runs this master's code."""
        self.spawner_version, self.spawner_protocol = __version__, spawner_protocol()

    def reaped(self, pid: int, status: int) -> bool:
        """The master reaped a child that is not the spawner: the proof's, perhaps."""
        return self.proof is not None and self.proof.reaped(pid, status)

    def cancel(self) -> None:
        if self.proof is not None:
            self.proof.cancel()

    def counters(self) -> dict[str, int]:
        """For the metrics endpoint: upgrades of this master, and code reloads (kept across them)."""
        return {"orch_upgrades_total": self.count, "orch_code_reloads_total": self.master.code.count}

    def status(self) -> dict[str, Any]:
        """The versions `orch status` shows: the master's and its helpers'."""
        return {"master": __version__, "spawner": self.spawner_version, "zygotes": self.spawner_version,
                "upgrades": self.count, "previous": self.previous, "upgrading": self._job is not None,
                "old_spawners": [old.status() for old in self.beside]}

    # --- steps ---------------------------------------------------------------------------
    def _refused(self) -> str | None:
        master = self.master
        if self._job is not None:
            return "an upgrade is already in progress"
        if master.stopping:
            return "the master is stopping"
        if master.last_reload_error:
            return f"the config does not load ({master.last_reload_error}); fix it and reload first"
        return None  # a saved file is not: the next master adopts the fleet as applied, then reloads

    def _when_quiet(self, then: Any) -> None:
        busy = self._busy()
        job = self._job
        if job is None:
            return
        if self._importing():  # it ends by itself (IMPORT_TIMEOUT); then the roll it starts has QUIET_WAIT
            job["until"] = max(job["until"], time.monotonic() + QUIET_WAIT)
        if not busy:
            then()
        elif self.master.stopping:
            self._finish("upgrade refused: the master is stopping")
        elif time.monotonic() > job["until"]:
            self._finish(f"the fleet did not settle within {QUIET_WAIT:.0f}s ({busy}); try again")
        else:
            self.master.loop.call_later(POLL, lambda: self._when_quiet(then))

    def _busy(self) -> str | None:
        """What is in flight and cannot cross exec, or None."""
        master, sup = self.master, self.master.supervisor
        if master.stopping:
            return "the master is stopping"
        # a reload being expanded is not: abandoned at the exec, it runs again under the next master
        if self._importing():
            return "a code reload's zygotes are importing"  # its roll, once they have, is carried
        starting = sum(1 for i in sup.instances.values() if i.state is State.STARTING)
        if sup.by_token or starting:
            return f"{max(starting, len(sup.by_token))} instances are starting"
        if any(not isinstance(run, ExecCheck) for run in sup.exec_probes.waiting.values()):
            return "hooks are running"  # exec probes are not waited for: they are cancelled at exec
        if master.control is not None and any((c.owed and c.drained is None) or c.keep_open
                                              for c in master.control.connections if c not in self._kept()):
            return "control commands are waiting for their answers"  # a stream (events -f) ends at exec
        return None

    def _importing(self) -> bool:
        """New code is importing (`orch reload --code`): waited for, however long it takes
        (code_reload.py gives it up at IMPORT_TIMEOUT), since its roll is carried."""
        return getattr(self.master, "code", None) is not None and bool(self.master.code.pending)

    def _kept(self) -> set[Any]:
        """The control connections owed answers that cross exec: the asker's, those of
        commands waiting on instances (the next master goes on waiting and answers them) and
        `orch events -f` streams (the next master goes on with them)."""
        from .capture import asked_again, streams, waiting_clients
        asker = self._job["conn"] if self._job else None
        return {asker, *waiting_clients(self.master), *streams(self.master), *asked_again(self.master)} - {None}

    def _prove(self) -> None:
        from .capture import capture
        record, _ = capture(self.master, None)
        self.proof = Proof(self.master.loop, record, self._proved)

    def _proved(self, error: str | None, answer: dict[str, Any]) -> None:
        self.proof = None
        job = self._job
        if job is None:
            return
        if error is not None:
            self._finish(f"upgrade refused, nothing changed: {error}")
            return
        log.info("upgrade: orch %s in %s can take over (%s instances)", answer.get("version"),
                 answer.get("path"), answer.get("instances"))
        if job["check"]:
            self._finish(None, {"checked": True, "from": __version__, "to": answer.get("version"),
                                "path": answer.get("path"), "pid": os.getpid()})
            return
        job["to"] = answer.get("version")
        job["until"] = time.monotonic() + QUIET_WAIT  # the proof took a while: settle again
        self._when_quiet(self._drain)

    def _drain(self) -> None:
        """Stop accepting; once what was accepted is answered (DRAIN at most), exec."""
        job = self._job
        assert job is not None
        if self.drain is None:
            self.drain = Drain(self.master, self._kept)
            self.drain.pause()
        job["drained_by"] = time.monotonic() + DRAIN
        self._draining()

    def _draining(self) -> None:
        job, drain = self._job, self.drain
        if job is None or drain is None:
            return
        if drain.in_flight() and time.monotonic() < job["drained_by"] and not self.master.stopping:
            self.master.loop.call_later(POLL, self._draining)
        elif self._busy():  # a handed-over client asked for a reload meanwhile: settle again
            self.drain = None
            drain.unpause()
            self._when_quiet(self._drain)
        else:
            left = drain.in_flight()
            log.info("upgrade: servers drained in %.0f ms%s", (time.monotonic() - job["drained_by"] + DRAIN) * 1000,
                     f" ({left} connections still unanswered are closed)" if left else "")
            self._exec()

    def _exec(self) -> None:
        """Hand everything over and exec; back here only if exec failed."""
        from .capture import capture
        why = self._refused_now()
        if why:
            self._finish(f"upgrade refused, nothing changed: {why}")
            return
        job = self._job
        assert job is not None
        master = self.master
        checks = [run for run in master.supervisor.exec_probes.waiting.values() if isinstance(run, ExecCheck)]
        for check in checks:
            check.cancel()  # its command is killed; the new master probes afresh
        master.supervisor.flush()  # queued signals go out now
        if self.drain is not None:
            self.drain.part()
        record, fds = capture(master, job["conn"])
        record["master"]["upgrades"] = self.count + 1
        fd = record_fd(record)
        log.info("upgrade: master %d re-executes into orch %s (%d instances carried over)",
                 os.getpid(), job.get("to"), len(record["instances"]))
        for flush in master.loop.before_wait:  # the master's own log is written out first
            flush()
        sys.stdout.flush()
        sys.stderr.flush()
        error = exec_successor(fd, fds, master.loop.take_signals)
        os.close(fd)
        for inst in {check.inst for check in checks}:
            master.probes.begin(inst)  # the probes cancelled for the exec start again
        self._finish(f"upgrade failed, the master goes on as it was: cannot exec {sys.executable}: "
                     f"{error.strerror or error}")

    def _refused_now(self) -> str | None:
        job, self._job = self._job, None
        try:
            return self._refused()
        finally:
            self._job = job

    def _finish(self, error: str | None, result: dict[str, Any] | None = None) -> None:
        job, self._job = self._job, None
        drain, self.drain = self.drain, None
        if drain is not None:
            drain.unpause()
        reply = job["reply"] if job else None
        if error is not None:
            self._fail(reply, error)
        else:
            log.info("upgrade --check: orch %s can take over", (result or {}).get("to"))
            if reply is not None:
                reply.resolve(result)

    @staticmethod
    def _fail(reply: Any, error: str) -> None:
        log.error("%s", error)
        if reply is not None:
            reply.fail(error, 1)
