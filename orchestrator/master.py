"""The master process behind `orch up`: wires config, spawner, loop, supervisor and control."""

from __future__ import annotations

import enum
import gc
import logging
import os
import signal
import time
from typing import Any, Callable

from . import __version__
from .config.load import Config, Settings, TemplateCache
from .config.sockets import DEFAULT_RESET_AFTER
from .control.code_watch import CodeWatch
from .control.commands import Commands
from .control.live import LiveSettings
from .control.notify import NotifyServer
from .control.server import ControlServer
from .expand.render import ExpansionCache
from .expand.spec import ProcessSpec
from .handover.upgrade import Upgrader
from .loop import Coalesced, EventLoop
from .observe.logs import Echo
from .supervise.service import ServiceNotifier
from .plan import reconcile
from .spawn.child import reaped
from .spawn.listeners import Listeners
from .spawn.orphans import StateRecorder, kill_groups, state_path
from .spawn.pidfile import PidLock
from .spawn.spawner import SpawnerClient
from .supervise.applying import apply_first
from .supervise.events import Event, OpsIdle, SpawnerLost, StateChanged
from .supervise.hooks import Hooks
from .supervise.journal import Journal
from .supervise.kernel_memory import KernelMemory
from .supervise.limits import Limits
from .supervise.probing import Prober
from .supervise.supervisor import Supervisor
from .supervise.code_reload import CodeReloader
from .supervise.reloader import Reloader, set_log_level
from .supervise.scaler import Scaler
from .supervise.unserved import UnservedSockets

log = logging.getLogger("orch")


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


class Phase(enum.Enum):
    """The master's lifecycle: running; stopping every instance (graceful); finishing (the
    spawner was told to end what is left and exit, and the loop ends with it)."""

    RUNNING = "running"
    STOPPING = "stopping"
    FINISHING = "finishing"


_NEXT = {Phase.RUNNING: {Phase.STOPPING, Phase.FINISHING}, Phase.STOPPING: {Phase.FINISHING},
         Phase.FINISHING: set()}


class Master:
    """One `orch up`: runs the loop until shutdown; `run()` returns the exit code."""

    def __init__(self, config: Config, specs: list[ProcessSpec], spawner: SpawnerClient,
                 lock: PidLock, quiet: bool = False, listeners: Listeners | None = None,
                 templates: TemplateCache | None = None, held: frozenset[str] = frozenset()):
        self.config = config
        self._held = held  # stopped by `orch stop` before this master started: they stay stopped
        self.settings: Settings = config.settings
        self.spawner = spawner
        self.lock = lock
        self.loop = EventLoop()
        self.exit_code = 0
        self.started = time.time()
        self.applied_at: float | None = None
        echo = None if quiet else Echo()
        self.notify_path = self.settings.control_socket.with_name(self.settings.control_socket.name + ".notify")
        self.supervisor = Supervisor(self.loop, spawner, self.settings.log_dir, echo, str(self.notify_path))
        self.supervisor.events.subscribe(self.supervisor.launcher.on_event)  # first: last lines to the log
        self.limits = Limits(self.supervisor, self.loop, self.settings.check_interval)
        self.kernel_memory = KernelMemory.start(self.loop, self.supervisor, self.limits, spawner.run,
                                                self.settings.check_interval) if self.settings.cgroup == "auto" else None
        self.probes = Prober(self.supervisor, self.loop)
        self.notify: NotifyServer | None = None
        self.metrics: Any = None
        self.dashboard: Any = None  # web/dashboard.py, with [orchestrator] http
        self.service = ServiceNotifier(self.loop, self.supervisor)
        self.state_file = StateRecorder(self.loop, self.supervisor, self.settings.pidfile, lambda: self.spawner)
        self.supervisor.events.subscribe(self._on_event)
        # the fleet's recent events (`orch events`, hooks, the dashboard); other parts note
        # what is no state change with master.journal.record(kind, ...), e.g. "scaled"
        self.journal = Journal()
        self.supervisor.events.subscribe(self.journal.on_event)
        self.hooks = Hooks(self.loop, self.journal, lambda: self.config.hooks, self.supervisor.exec_probes,
                           lambda: self.settings.log_dir, lambda: self.config.folder)
        self.control: ControlServer | None = None
        self.watcher: Any = None
        self._initial_specs = specs
        self.expansions = ExpansionCache()
        self.templates = templates or TemplateCache()  # a reload parses only the tables that changed
        self.expansions.seed(config, specs)
        self.phase = Phase.RUNNING
        self._check_done = Coalesced(self.loop, self._finish_if_idle)  # one scan per wake-up
        self._fd_limit: tuple[int, int] | None = None  # RLIMIT_NOFILE before run() raised it
        self.listeners = listeners or Listeners()
        self.unserved = UnservedSockets(self.loop, lambda: self.supervisor.instances.values(),
                                        lambda: self.listeners.held, self._reset_after)
        self.supervisor.events.subscribe(self.unserved.on_event)
        self.listeners.annotate = lambda key: self.unserved.status(key)
        self._release_later = Coalesced(self.loop, self._release_sockets)
        self.reloader = Reloader(self)
        self.code = CodeReloader(self.supervisor, self.loop, lambda: self.stopping)  # `orch reload --code`
        self.code_watch = CodeWatch(self.loop, self.supervisor, self.code.request)  # templates' code_watch
        self.live = LiveSettings(self)  # [orchestrator] settings that rebind or move on save
        # autoscaled cells (replicas = { min, max, backlog }): each follows its own queue
        self.scaler = Scaler(self.supervisor, self.loop, lambda **facts: self.journal.record("scaled", **facts))
        self.upgrader = Upgrader(self)  # `orch upgrade`, SIGUSR2 (handover/)
        set_log_level(self.settings.log_level)

    @property
    def stopping(self) -> bool:
        """Shutting down: reloads are refused and `orch down` only waits."""
        return self.phase is not Phase.RUNNING

    def _enter(self, phase: "Phase") -> bool:
        """Move to `phase` if the lifecycle allows it from here; False (nothing done) if not."""
        if phase not in _NEXT[self.phase]:
            return False
        self.phase = phase
        return True

    def _on_event(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            if (event.started or event.ended) and self.phase is Phase.STOPPING:
                self._check_done()  # once shutting down, the last process to end lets the master exit
            if self.listeners.retired:
                self._release_later()  # after this wake-up: a restarting slot swaps its spec
        elif isinstance(event, OpsIdle):
            self.reloader.idle()
        elif isinstance(event, SpawnerLost):
            self._spawner_lost(event.spawner)

    def _reset_after(self, key: str) -> float:
        decl = self.listeners.decls.get(key)
        return decl.reset_after if decl is not None else DEFAULT_RESET_AFTER

    def _release_sockets(self) -> None:
        """Close the sockets a reload retired once no instance's process can still use them."""
        if not self.listeners.retired:  # the usual case: no walk over every instance
            return
        self.spawner.close_sockets(self.listeners.release(
            {key for inst in self.supervisor.instances.values()
             for spec in (inst.spec, inst.next_spec) if spec is not None for key in spec.socket_keys}))

    # --- lifecycle ------------------------------------------------------------------
    def run(self, handover: Any = None) -> int:
        """`handover` (handover/resume.py): this process was the master before an upgrade's
        exec; its sockets are taken over and its instances carried on, none started."""
        self._fd_limit = _raise_fd_limit()  # after the spawner fork: children keep the usual limit
        loop = self.loop
        try:
            loop.add_signal_handler(signal.SIGTERM, self._graceful)
            loop.add_signal_handler(signal.SIGINT, self._graceful)
            loop.add_signal_handler(signal.SIGQUIT, self._immediate)
            loop.add_signal_handler(signal.SIGHUP, lambda s: self.request_reload("SIGHUP"))
            loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
            loop.add_signal_handler(signal.SIGCHLD, self._reap)
            loop.add_signal_handler(signal.SIGUSR2, lambda s: self.upgrader.request(check=False))
            taken = handover.socket if handover is not None else (lambda name: None)
            self.control = ControlServer(loop, self.settings.control_socket, Commands(self), sock=taken("control"))
            self.notify = NotifyServer(loop, self.notify_path, self.limits.on_notify, sock=taken("notify"))
            if self.settings.metrics:
                from .observe.metrics import MetricsServer
                self.metrics = MetricsServer(loop, self.settings.metrics, self._metrics_text, sock=taken("metrics"))
                log.info("metrics on http://%s:%d/metrics", *self.metrics.address[:2])
            if self.settings.http:
                from .web.dashboard import Dashboard
                self.dashboard = Dashboard(self, sock=taken("http"))
                log.info("dashboard on http://%s:%d/ (orch dashboard prints the address to open)",
                         *self.dashboard.server.address)
            self.reloader._remember_file()
            if handover is None:
                self.spawner.send_sockets(self.listeners.items())  # bound by up.py, before any spawn
                plan = reconcile(self.scaler.desired(self._initial_specs), {})
            else:  # the spawner holds the sockets already, and the instances run on
                plan = handover.restore(self)
            # a chunk at a time: the spawner forks while the rest are set up, and while
            # the watcher below starts up
            apply_first(self.supervisor, plan, self._held, self.supervisor.flush)
            if self._held:
                self.state_file.say_held()
            if self.settings.watch:
                self._start_watcher()
                if self.reloader._read_sources() != self.reloader.config_bytes:  # saved while we were starting
                    self.loop.call_soon(lambda: self.request_reload("file changed during start-up"))
            self.config_applied()  # code_watch
            self.loop.call_soon(self.service.update)  # an empty fleet is ready at once
            self.applied_at = self.applied_at if handover is not None else time.time()
            if handover is None:  # else restore said what it took over
                log.info("orch %s master %d: %d instances from %s", __version__, os.getpid(),
                         len(plan.start), self.config.path)
            gc.freeze()  # what exists now lives as long as the master: no collection walks it again
            gc.enable()  # off while it imported and set up (cli/__init__.py: main)
            loop.run()
        finally:
            self._cleanup()
        return self.exit_code

    def apply_live_settings(self, old: Settings, new: Settings) -> tuple[dict[str, Any], list[str]]:
        return self.live.apply(old, new)

    def config_applied(self) -> None:
        self.code_watch.follow(self.config)  # the templates' code_watch globs

    def _start_watcher(self) -> None:
        from .control.watch import ConfigWatcher
        self.watcher = ConfigWatcher(self.loop, self.config.files, self.request_reload, self.settings.settle,
                                     self.config.include_patterns, self.reloader.prepare, self.reloader.drop_prepared)
        self.watcher.start()

    def _graceful(self, signum: int) -> None:
        if self.stopping:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop waiting
                self._immediate(signum)
            return
        log.info("%s: stopping %d instances (graceful, up to %.1fs)", signal.Signals(signum).name,
                 len(self.supervisor.alive()), self.settings.graceful_timeout)
        self.shutdown()

    def shutdown(self) -> None:
        """Graceful stop of every instance, bounded by graceful_timeout, then exit."""
        if not self._enter(Phase.STOPPING):
            return
        self.service.stop()
        self.scaler.close()  # no scaling step may start an instance while everything stops
        self.supervisor.stop_all()
        self.loop.call_later(self.settings.graceful_timeout, self._graceful_deadline)
        self._check_done()

    def _graceful_deadline(self) -> None:
        if self.supervisor.alive():
            log.warning("graceful_timeout passed: SIGKILL to %d instances", len(self.supervisor.alive()))
            self.supervisor.kill_all()

    def _immediate(self, signum: int) -> None:
        log.info("%s: killing every instance now", signal.Signals(signum).name)
        self.supervisor.shutting_down = True
        self._finish()

    def _finish_if_idle(self) -> None:
        if self.phase is Phase.STOPPING and not self.supervisor.alive():
            self._finish()

    def _finish(self) -> None:
        if not self._enter(Phase.FINISHING):
            return
        self.spawner.exit()  # it SIGKILLs any group still alive, reaps, and exits
        self.loop.call_later(5.0, self._spawner_overdue)

    def _spawner_overdue(self) -> None:
        log.error("the spawner did not exit: SIGKILL")
        os.kill(self.spawner.pid, signal.SIGKILL)

    def _reap(self, signum: int) -> None:
        for pid, status in reaped():
            if pid == self.spawner.pid:
                if self.phase is Phase.FINISHING:
                    self.loop.stop()
                else:
                    self._spawner_lost(self.spawner)
            else:
                self.upgrader.reaped(pid, status)  # its proof child, if it is that

    def _spawner_lost(self, old: SpawnerClient) -> None:
        """The spawner died (killed from outside, or a bug). Its guard ends its children
        (spawn/guard.py); start a new spawner and bring the fleet back. Its EOF and its
        exit both say so: only the first, while it is still the current one, acts."""
        if self.phase is Phase.FINISHING or old is not self.spawner:
            return
        try:
            os.waitpid(old.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        log.error("the spawner (pid %d) died, and every instance with it; starting a new one", old.pid)
        # Its guard ends its children by the run's cookie; no replacement may start beside
        # them, so their groups are SIGKILLed here too (no look over every process).
        kill_groups((i.pid, i.start_ticks) for i in self.supervisor.by_pid.values())
        # posix_spawn: the watcher's threads run, and no Python may run between fork and exec
        self.spawner = SpawnerClient.start(f"orch: spawner {self.settings.name}", run=old.run,
                                           fd_limit=self._fd_limit,
                                           state=str(state_path(self.settings.pidfile)))
        self.spawner_took_over(old.pid)
        self.supervisor.replace_spawner(self.spawner)
        self.state_file.changed()

    def spawner_took_over(self, old_pid: int) -> None:
        """A new spawner of this code took over from `old_pid` (dead, or of another protocol)."""
        self.spawner.send_sockets(self.listeners.items())
        self.upgrader.spawner_replaced()  # it runs this master's code
        self.journal.record("spawner_replaced", old_pid=old_pid, pid=self.spawner.pid)

    def _metrics_text(self) -> str:
        from .observe.metrics import gc_values, render_metrics
        from .observe.scaling_metrics import render_scaling
        rows = self.supervisor.status(usage=True)
        return render_metrics(rows, {**self.upgrader.counters(), "orch_reloads_total": self.reloader.count,
                                     "orch_reload_failures_total": self.reloader.failures,
                                     "orch_last_reload_seconds": self.reloader.last_seconds,
                                     "orch_notify_dropped_total": self.limits.notify_dropped,
                                     "orch_instances": len(rows), **gc_values()}) + render_scaling(self.scaler.status())

    def _reopen_logs(self, signum: int) -> None:
        for inst in self.supervisor.instances.values():
            inst.logfile.reopen()
        log.info("SIGUSR1: reopened %d log files", len(self.supervisor.instances))

    def _cleanup(self) -> None:
        self.scaler.close()
        self.upgrader.cancel()
        if self.phase is not Phase.FINISHING:  # set-up failed: the spawner must not outlive us
            self.spawner.exit()
        if self.watcher is not None:
            self.watcher.stop()
        self.code_watch.stop()
        if self.control is not None:
            self.control.close()
        if self.notify is not None:
            self.notify.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.dashboard is not None:
            self.dashboard.close()
        self.unserved.close()
        self.supervisor.launcher.pump.drain()  # children's last words, read in batches
        for inst in self.supervisor.instances.values():
            inst.logfile.close()
        if self.kernel_memory is not None:
            self.kernel_memory.close()
        self.state_file.close(clean=not self.exit_code)
        self.listeners.close_all()
        self.lock.release()
        self.loop.close()
        log.info("master %d exited", os.getpid())

    # --- reload ---------------------------------------------------------------------
    # --- reload (supervise/reloader.py) ----------------------------------------------------
    def request_reload(self, origin: str, force: bool = False,
                       on_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        return self.reloader.request(origin, force, on_done)

    def reload_code(self, names: list[str], label: str, on_done: Callable[[dict[str, Any]], None]) -> None:
        self.code.request(names, label, on_done)

    def load_later(self, on_done: Callable[[Any], None]) -> None:
        self.reloader.load_later(on_done)

    @property
    def reloading(self) -> str | None:
        """The origin of the reload whose config is being expanded, if one is."""
        return self.reloader.expanding

    @property
    def last_reload_error(self) -> str | None:
        return self.reloader.last_error

    @property
    def reload_count(self) -> int:
        return self.reloader.count

    @property
    def config_bytes(self) -> str | None:
        return self.reloader.config_bytes
