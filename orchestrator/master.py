"""The master process behind `orch up`: wires config, spawner, loop, supervisor and control."""

from __future__ import annotations

import copy
import gc
import logging
import os
import signal
import time
from typing import Any, Callable

from . import __version__
from .config.keys import LIVE_SETTINGS
from .config.load import Config, Settings, TemplateCache, load_config
from .config.sockets import DEFAULT_RESET_AFTER
from .control.commands import Commands
from .control.notify import NotifyServer
from .control.saves import sources_digest
from .control.server import ControlServer
from .errors import ConfigError, ConfigProblem
from .expand.render import Expansion, ExpansionCache
from .expand.spec import ProcessSpec
from .loop import EventLoop
from .observe.logs import Echo
from .procfs import start_time
from .supervise.service import ServiceNotifier
from .plan import reconcile
from .spawn.child import reaped
from .spawn.listeners import Listeners
from .spawn.orphans import StateRecorder, end_record, state_path
from .spawn.pidfile import PidLock
from .spawn.spawner import SpawnerClient
from .supervise.events import Event, StateChanged
from .supervise.limits import Limits
from .supervise.supervisor import Supervisor
from .supervise.unserved import UnservedSockets

log = logging.getLogger("orch")


STEP_SECONDS = 0.02  # how long one step of a reload's expansion holds the loop (plus one render's budget)
HARD_FDS = 1 << 19  # systemd's default hard limit for services


def _raise_fd_limit() -> tuple[int, int]:
    """The master holds a pipe per instance, and /proc fds per instance for status and the
    memory limits (up to four in all): the usual soft limit of 1,024 fds would cap a fleet
    at a few hundred instances. The soft limit goes up to the hard one; a master allowed to
    (root, CAP_SYS_RESOURCE) also lifts a hard limit below HARD_FDS, as supervisord's
    `minfds` does and as systemd gives services. Kept /proc fds always leave some free
    (observe/procfs.py: kept_fd_ceiling), so a full table never blocks a control connection.
    Returns the limits before, which a replacement spawner restores for its children."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HARD_FDS:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (HARD_FDS, HARD_FDS))
            return soft, hard
        except (ValueError, OSError):
            pass  # not allowed: the hard limit stays
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (ValueError, OSError):
            pass
    return soft, hard


def set_log_level(name: str) -> None:
    log.setLevel(getattr(logging, name.upper(), logging.INFO))


class Master:
    """One `orch up`: runs the loop until shutdown; `run()` returns the exit code."""

    def __init__(self, config: Config, specs: list[ProcessSpec], spawner: SpawnerClient,
                 lock: PidLock, quiet: bool = False, listeners: Listeners | None = None,
                 templates: TemplateCache | None = None):
        self.config = config
        self.settings: Settings = config.settings
        self.spawner = spawner
        self.lock = lock
        self.loop = EventLoop()
        self.exit_code = 0
        self.started = time.time()
        self.applied_at: float | None = None
        self.last_reload_error: str | None = None
        self.reload_count = 0
        self.reload_queued: str | None = None  # the origin of a reload waiting for the one being applied
        self.config_bytes: str | None = None  # digest of the sources last read
        echo = None if quiet else Echo()
        self.notify_path = self.settings.control_socket.with_name(self.settings.control_socket.name + ".notify")
        self.supervisor = Supervisor(self.loop, spawner, self.settings.log_dir, echo, str(self.notify_path))
        self.limits = Limits(self.supervisor, self.loop, self.settings.check_interval)
        self.notify: NotifyServer | None = None
        self.metrics: Any = None
        self.reload_failures = 0
        self.last_reload_seconds = 0.0
        self.service = ServiceNotifier(self.loop, self.supervisor)
        self.state_file = StateRecorder(self.loop, self.supervisor, self.settings.pidfile, lambda: self.spawner)
        self.supervisor.on_idle = self._ops_idle
        self.supervisor.on_spawner_lost = self._spawner_lost
        self.supervisor.events.subscribe(self._on_event)
        self.control: ControlServer | None = None
        self.watcher: Any = None
        self._initial_specs = specs
        self.expansions = ExpansionCache()
        self.templates = templates or TemplateCache()  # a reload parses only the tables that changed
        self.expansions.seed(config, specs)
        self._finishing = False
        self._stopping = False
        self._done_check_pending = False
        self._replacing_spawner = False
        self._fd_limit: tuple[int, int] | None = None  # RLIMIT_NOFILE before run() raised it
        self.listeners = listeners or Listeners()
        self.unserved = UnservedSockets(self.loop, lambda: self.supervisor.instances.values(),
                                        lambda: self.listeners.held, self._reset_after)
        self.supervisor.events.subscribe(self.unserved.on_event)
        self.listeners.annotate = lambda key: self.unserved.status(key)
        self._release_pending = False
        self._expanding: str | None = None  # the origin of the reload being expanded, if any
        set_log_level(self.settings.log_level)

    @property
    def stopping(self) -> bool:
        """Shutting down: reloads are refused and `orch down` only waits."""
        return self._stopping

    @property
    def reloading(self) -> str | None:
        """The origin of the reload whose config is being expanded, if one is."""
        return self._expanding

    def _on_event(self, event: Event) -> None:
        """Once shutting down, the last process to end lets the master exit."""
        if isinstance(event, StateChanged) and (event.started or event.ended):
            self._check_done()
        if isinstance(event, StateChanged) and self.listeners.retired and not self._release_pending:
            self._release_pending = True  # after this wake-up: a restarting slot swaps its spec
            self.loop.call_soon(self._release_sockets)

    def _reset_after(self, key: str) -> float:
        decl = self.listeners.decls.get(key)
        return decl.reset_after if decl is not None else DEFAULT_RESET_AFTER

    def _release_sockets(self) -> None:
        """Close the sockets a reload retired once no instance's process can still use them."""
        self._release_pending = False
        if not self.listeners.retired:  # the usual case: no walk over every instance
            return
        self.spawner.close_sockets(self.listeners.release(
            {key for inst in self.supervisor.instances.values()
             for spec in (inst.spec, inst.next_spec) if spec is not None for key in spec.socket_keys}))

    # --- lifecycle ------------------------------------------------------------------
    def run(self) -> int:
        self._fd_limit = _raise_fd_limit()  # after the spawner fork: children keep the usual limit
        loop = self.loop
        try:
            loop.add_signal_handler(signal.SIGTERM, self._graceful)
            loop.add_signal_handler(signal.SIGINT, self._graceful)
            loop.add_signal_handler(signal.SIGQUIT, self._immediate)
            loop.add_signal_handler(signal.SIGHUP, lambda s: self.request_reload("SIGHUP"))
            loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
            loop.add_signal_handler(signal.SIGCHLD, self._reap)
            self.control = ControlServer(loop, self.settings.control_socket, Commands(self))
            self.notify = NotifyServer(loop, self.notify_path, self.limits.on_notify)
            if self.settings.metrics:
                from .observe.metrics import MetricsServer
                self.metrics = MetricsServer(loop, self.settings.metrics, self._metrics_text)
                log.info("metrics on http://%s:%d/metrics", *self.metrics.address[:2])
            self._remember_file()
            self.spawner.send_sockets(self.listeners.items())  # bound by up.py, before any spawn
            plan = reconcile(self._initial_specs, {})
            self.supervisor.apply(plan)
            self.supervisor.flush()  # the spawner forks while the watcher below starts up
            if self.settings.watch:
                self._start_watcher()
                if self._read_sources() != self.config_bytes:  # saved while we were starting
                    self.loop.call_soon(lambda: self.request_reload("file changed during start-up"))
            self.loop.call_soon(self.service.update)  # an empty fleet is ready at once
            self.applied_at = time.time()
            log.info("orch %s master %d: %d instances from %s", __version__, os.getpid(),
                     len(plan.start), self.config.path)
            gc.freeze()  # what exists now lives as long as the master: no collection walks it again
            loop.run()
        finally:
            self._cleanup()
        return self.exit_code

    def _start_watcher(self) -> None:
        from .control.watch import ConfigWatcher
        self.watcher = ConfigWatcher(self.loop, self.config.files, self.request_reload, self.settings.settle)
        self.watcher.set_files(self.config.files, self.config.include_patterns)
        self.watcher.start()

    def _graceful(self, signum: int) -> None:
        if self._stopping:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop waiting
                self._immediate(signum)
            return
        log.info("%s: stopping %d instances (graceful, up to %.1fs)", signal.Signals(signum).name,
                 len(self.supervisor.alive()), self.settings.graceful_timeout)
        self.shutdown()

    def shutdown(self) -> None:
        """Graceful stop of every instance, bounded by graceful_timeout, then exit."""
        self.service.stop()
        self._stopping = True
        self.supervisor.stop_all()
        self.loop.call_later(self.settings.graceful_timeout, self._graceful_deadline)
        self._check_done()

    def _graceful_deadline(self) -> None:
        if self.supervisor.alive():
            log.warning("graceful_timeout passed: SIGKILL to %d instances", len(self.supervisor.alive()))
            self.supervisor.kill_all()

    def _immediate(self, signum: int) -> None:
        log.info("%s: killing every instance now", signal.Signals(signum).name)
        self._stopping = True
        self.supervisor.shutting_down = True
        self._finish()

    def _check_done(self) -> None:
        # Coalesced: one scan per wake-up, not one per exit (500 exits must not cost O(N^2)).
        if self._stopping and not self._done_check_pending:
            self._done_check_pending = True
            self.loop.call_soon(self._finish_if_idle)

    def _finish_if_idle(self) -> None:
        self._done_check_pending = False
        if self._stopping and not self.supervisor.alive():
            self._finish()

    def _finish(self) -> None:
        if self._finishing:
            return
        self._finishing = True
        self.spawner.exit()  # it SIGKILLs any group still alive, reaps, and exits
        self.loop.call_later(5.0, self._spawner_overdue)

    def _spawner_overdue(self) -> None:
        log.error("the spawner did not exit: SIGKILL")
        os.kill(self.spawner.pid, signal.SIGKILL)

    def _reap(self, signum: int) -> None:
        for pid, _ in reaped():
            if pid == self.spawner.pid:
                if self._finishing:
                    self.loop.stop()
                else:
                    self._spawner_lost()

    def _spawner_lost(self) -> None:
        """The spawner died (killed from outside, or a bug). Its guard ends its children
        (spawn/guard.py); start a new spawner and bring the fleet back."""
        if self._finishing or self._replacing_spawner:
            return
        self._replacing_spawner = True
        try:
            old = self.spawner
            try:
                os.waitpid(old.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            log.error("the spawner (pid %d) died, and every instance with it; starting a new one", old.pid)
            # Its guard ends its children, but the fleet must not come back before they are
            # gone: end them here too, by the run's cookie and their sessions (rare: one /proc
            # scan; the guard's sweep spares what starts after the spawner died).
            groups = [[i.pid, i.start_ticks] for i in self.supervisor.by_pid.values() if i.start_ticks is not None]
            end_record({"run": old.run, "run_start": start_time(os.getpid()), "groups": groups},
                       "by the dead spawner", 0.5)
            # posix_spawn: the config watcher's threads are running, and no Python may run
            # between fork and exec in a process with threads.
            self.spawner = SpawnerClient.start(f"orch: spawner {self.settings.name}", run=old.run,
                                               fd_limit=self._fd_limit,
                                               state=str(state_path(self.settings.pidfile)))
            self.spawner.send_sockets(self.listeners.items())
            self.supervisor.replace_spawner(self.spawner)
            self.state_file.changed()
        finally:
            self._replacing_spawner = False

    def _metrics_text(self) -> str:
        from .observe.metrics import render_metrics
        rows = self.supervisor.status(usage=True)
        return render_metrics(rows, {"orch_reloads_total": self.reload_count,
                                     "orch_reload_failures_total": self.reload_failures,
                                     "orch_last_reload_seconds": self.last_reload_seconds,
                                     "orch_notify_dropped_total": self.limits.notify_dropped,
                                     "orch_instances": len(rows)})

    def _reopen_logs(self, signum: int) -> None:
        for inst in self.supervisor.instances.values():
            inst.logfile.reopen()
        log.info("SIGUSR1: reopened %d log files", len(self.supervisor.instances))

    def _cleanup(self) -> None:
        if not self._finishing:  # set-up failed: the spawner must not outlive us
            self.spawner.exit()
        if self.watcher is not None:
            self.watcher.stop()
        if self.control is not None:
            self.control.close()
        if self.notify is not None:
            self.notify.close()
        if self.metrics is not None:
            self.metrics.close()
        self.unserved.close()
        for inst in self.supervisor.instances.values():
            inst.logfile.close()
        self.state_file.close(clean=not self.exit_code)
        self.listeners.close_all()
        self.lock.release()
        self.loop.close()
        log.info("master %d exited", os.getpid())

    # --- reload ---------------------------------------------------------------------
    def _remember_file(self) -> None:
        self.config_bytes = self._read_sources()

    def _read_sources(self) -> str | None:
        """A digest of the config and its included files: a save that changes nothing (a
        re-save, vim's rename dance, a burst ending where it began) is never applied."""
        return sources_digest(self.config.files, self.config.include_patterns)

    def request_reload(self, origin: str, force: bool = False,
                       on_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Reload now, or after the reload being applied finishes (against the newest file).
        Returns the outcome, or None when the config is still being expanded: then
        `on_done` gets it, from the loop, once it is applied or refused."""
        if self._stopping:
            return {"applied": False, "reason": "shutting down"}
        if self.supervisor.pending_ops or self._expanding is not None:
            if self.reload_queued is None or self.reload_queued.startswith("file"):
                self.reload_queued = origin  # an explicit request outranks a file save
            log.info("reload (%s) queued: the previous reload is still being applied", origin)
            return {"applied": False, "queued": True}
        if not force and origin.startswith("file") and self._read_sources() == self.config_bytes:
            return {"applied": False, "reason": "unchanged"}
        return self.reload(origin, on_done)

    def _ops_idle(self) -> None:
        if self.reload_queued is not None and self._expanding is None:
            origin, self.reload_queued = self.reload_queued, None
            # A save is applied only if the file changed since the reload it waited for read
            # it; `orch reload` and SIGHUP reload whatever the file holds.
            self.loop.call_soon(lambda: self.request_reload(f"{origin}, queued",
                                                            force=not origin.startswith("file")))

    def load_later(self, on_done: Callable[[tuple[Config, list[ProcessSpec]] | ConfigError], None]) -> None:
        """Read and expand the config in steps from the loop (as a reload does, without
        applying it): `on_done` gets (config, specs) or the ConfigError. For `orch diff`."""
        try:
            config = load_config(self.config.path, self.templates)
        except ConfigError as exc:
            on_done(exc)
            return
        cache = copy.copy(self.expansions)  # a diff must not become the next reload's baseline
        cache.templates = dict(cache.templates)
        self._step(Expansion(config, cache, STEP_SECONDS), lambda job: on_done(_outcome(job, config)))

    def _step(self, job: Expansion, then: Callable[[Expansion], None]) -> None:
        """Run `job` one slice per loop turn (timers run after the fds are polled), then `then`."""
        def next_slice() -> None:
            try:
                done = job.step()
            except Exception:  # noqa: BLE001 - a bug in expansion must not wedge reloads
                log.exception("expansion failed")
                job.problem("", "internal error while expanding the config (see the master's log)")
                done = job.force_end()
            if done:
                then(job)
            else:
                self.loop.call_later(0, next_slice)
        next_slice()

    def reload(self, origin: str, on_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Read the config now, expand it in steps, apply the plan: the outcome, or None
        (then `on_done` gets it) when the expansion takes more than one step."""
        began = time.perf_counter()
        try:
            config = load_config(self.config.path, self.templates)
        except Exception as exc:  # noqa: BLE001 - a reload never takes the master down
            return self._reload_failed(origin, exc)
        outcome: list[dict[str, Any]] = []
        self._expanding = origin
        # No cyclic collection while a reload runs: parsing a 5,000-table file makes enough
        # objects to set off full collections over the whole fleet's state, which took as
        # long as the reload's own work. It runs again once the plan is applied.
        gc.disable()

        def applied(job: Expansion) -> None:
            self._expanding = None
            gc.enable()
            result = self._apply_expansion(origin, config, job, began)
            if on_done is not None and not first_step[0]:
                on_done(result)
            outcome.append(result)
            if not self.supervisor.pending_ops:
                self._ops_idle()  # a reload queued behind this one, with nothing to wait for

        first_step = [True]
        self._step(Expansion(config, self.expansions, STEP_SECONDS), applied)
        first_step[0] = False
        return outcome[0] if outcome else None

    def _apply_expansion(self, origin: str, config: Config, job: Expansion, began: float) -> dict[str, Any]:
        try:
            specs = job.result()
            if specs:  # bound before anything changes: a failed bind leaves the fleet as it was
                self.spawner.send_sockets(self.listeners.bind_config(config.sockets, config.path))
        except Exception as exc:  # noqa: BLE001 - a reload never takes the master down
            return self._reload_failed(origin, exc)
        self._remember_file()
        if not specs:
            self.last_reload_error = (f"{config.path}: the new config has no instances; refusing to "
                                      "stop everything (use `orch down` for that)")
            log.warning("reload (%s) refused: %s", origin, self.last_reload_error)
            return {"applied": False, "error": self.last_reload_error}
        plan = reconcile(specs, self.supervisor.running_view())
        self._apply_settings(config.settings)
        self.supervisor.apply(plan)
        self.supervisor.flush()  # the spawner starts on the new instances while we finish here
        self._release_sockets()  # sockets gone from the config and used by no instance
        self.config = config
        if self.watcher is not None:
            self.watcher.set_files(config.files, config.include_patterns)
        self.last_reload_error = None
        self.applied_at = time.time()
        self.reload_count += 1
        took = (time.perf_counter() - began) * 1000
        self.last_reload_seconds = took / 1000
        counts = plan.counts()
        log.info("reload (%s): +%d -%d ~%d =%d, %d kept, planned in %.1fms", origin, counts["start"],
                 counts["stop"], counts["restart"], counts["update"], counts["keep"], took)
        return {"applied": True, **counts, "planned_ms": round(took, 2)}

    def _reload_failed(self, origin: str, exc: Exception) -> dict[str, Any]:
        if not isinstance(exc, ConfigError):
            log.exception("reload (%s): unexpected error", origin)
            exc = ConfigError([ConfigProblem(str(self.config.path), "", f"internal error: {exc!r}")])
        self.reload_failures += 1
        self.last_reload_error = str(exc)
        self._remember_file()
        log.error("reload (%s) failed; nothing changed, every process keeps running:\n%s", origin, exc)
        return {"applied": False, "error": f"reload failed, nothing changed:\n{exc}"}

    def _apply_settings(self, new: Settings) -> None:
        old = self.settings
        for key in Settings.__dataclass_fields__:
            before, after = getattr(old, key), getattr(new, key)
            if before == after:
                continue
            if key in LIVE_SETTINGS:
                log.info("setting orchestrator.%s: %s -> %s", key, before, after)
            else:
                log.warning("setting orchestrator.%s changed (%s -> %s): takes effect only after "
                            "a restart of the master", key, before, after)
        if new.log_level != old.log_level:
            set_log_level(new.log_level)
        if new.check_interval != old.check_interval:
            self.limits.set_check_interval(new.check_interval)
        if new.watch != old.watch:
            if new.watch and self.watcher is None:
                self._start_watcher()
            elif not new.watch and self.watcher is not None:
                self.watcher.stop()
                self.watcher = None
        if self.watcher is not None:
            self.watcher.settle = new.settle
        live = {k: getattr(new, k) for k in LIVE_SETTINGS}
        self.settings = Settings(**{**old.__dict__, **live})


def _outcome(job: Expansion, config: Config) -> tuple[Config, list[ProcessSpec]] | ConfigError:
    try:
        return config, job.result()
    except ConfigError as exc:
        return exc
