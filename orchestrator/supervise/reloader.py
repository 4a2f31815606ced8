"""Reloading a running master: a request (a save, SIGHUP, `orch reload`), queued behind an
apply in progress and replayed against the newest file afterwards; the config read, expanded
in steps from the loop (expand/render.py's Expansion), diffed and applied; and the live
settings changed in place. Master.py wires it; `host` is the master (see ReloadHost)."""

from __future__ import annotations

import copy
import gc
import logging
import time
from typing import Any, Callable, Protocol

from ..config.keys import LIVE_SETTINGS
from ..config.load import Config, Settings, TemplateCache, load_config
from ..config.source import digest_of, read_sources, sources_digest
from ..errors import ConfigError, ConfigProblem
from ..expand.render import Expansion, ExpansionCache
from ..expand.spec import ProcessSpec
from ..loop import EventLoop
from ..plan import reconcile
from .events import Happened

log = logging.getLogger("orch")
STEP_SECONDS = 0.02  # how long one step of a reload's expansion holds the loop (plus one render's budget)


class ReloadHost(Protocol):
    """What the reloader needs of the master."""

    loop: EventLoop
    config: Config
    settings: Settings
    supervisor: Any
    spawner: Any
    listeners: Any
    limits: Any
    watcher: Any
    templates: TemplateCache
    expansions: ExpansionCache
    applied_at: float | None

    @property
    def stopping(self) -> bool: ...

    def _start_watcher(self) -> None: ...

    def _release_sockets(self) -> None: ...

    def apply_live_settings(self, old: Settings, new: Settings) -> tuple[dict[str, Any], list[str]]: ...

    def config_applied(self) -> None: ...


def set_log_level(name: str) -> None:
    log.setLevel(getattr(logging, name.upper(), logging.INFO))


class Reloader:
    """The reload state of one master: counts, the last error, the reload queued or being
    expanded, and the digest of the files last read."""

    def __init__(self, host: ReloadHost) -> None:
        self.host = host
        self.count = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_seconds = 0.0
        self.queued: str | None = None  # the origin of a reload waiting for the one being applied
        self.expanding: str | None = None  # the origin of the reload being expanded, if any
        self.config_bytes: str | None = None  # digest of the sources last read
        # and their bytes: an upgrade hands them over, so the next master adopts the fleet
        # this config made before it reloads a save still being expanded (handover/)
        self.applied_sources: dict[str, bytes] | None = None
        self.ahead: _Ahead | None = None  # a finished save, read and expanded ahead (prepare)

    def _remember_file(self) -> None:
        self.applied_sources = read_sources(self.host.config.files, self.host.config.include_patterns)
        self.config_bytes = digest_of(self.applied_sources)

    def _read_sources(self) -> str | None:
        """A digest of the config and its included files: a save that changes nothing (a
        re-save, vim's rename dance, a burst ending where it began) is never applied."""
        return sources_digest(self.host.config.files, self.host.config.include_patterns)

    def request(self, origin: str, force: bool = False,
                       on_done: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """Reload now, or after the reload being applied finishes (against the newest file).
        Returns the outcome, or None when the config is still being expanded: then
        `on_done` gets it, from the loop, once it is applied or refused."""
        if self.host.stopping:
            return {"applied": False, "reason": "shutting down"}
        if self.host.supervisor.pending_ops or self.expanding is not None:
            if self.queued is None or self.queued.startswith("file"):
                self.queued = origin  # an explicit request outranks a file save
            log.info("reload (%s) queued: the previous reload is still being applied", origin)
            return {"applied": False, "queued": True}
        digest = self._read_sources() if origin.startswith("file") else None
        if not force and origin.startswith("file") and digest == self.config_bytes:
            return {"applied": False, "reason": "unchanged"}
        return self.reload(origin, on_done, digest)

    def idle(self) -> None:
        if self.queued is not None and self.expanding is None:
            origin, self.queued = self.queued, None
            # A save is applied only if the file changed since the reload it waited for read
            # it; `orch reload` and SIGHUP reload whatever the file holds.
            self.host.loop.call_soon(lambda: self.request(f"{origin}, queued",
                                                            force=not origin.startswith("file")))

    def load_later(self, on_done: Callable[[tuple[Config, list[ProcessSpec]] | ConfigError], None]) -> None:
        """Read and expand the config in steps from the loop (as a reload does, without
        applying it): `on_done` gets (config, specs) or the ConfigError. For `orch diff`."""
        try:
            config = load_config(self.host.config.path, self.host.templates)
        except ConfigError as exc:
            on_done(exc)
            return
        self._step(Expansion(config, self._scratch(), STEP_SECONDS), lambda job: on_done(_outcome(job, config)))

    def _scratch(self) -> ExpansionCache:
        """The expansion cache to expand into without making the result the next reload's
        baseline (a diff; a save read ahead, until it is applied)."""
        cache = copy.copy(self.host.expansions)
        cache.templates = dict(cache.templates)
        return cache

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
                self.host.loop.call_later(0, next_slice)
        next_slice()

    def prepare(self) -> None:
        """Read and expand a finished save while its burst window runs (ConfigWatcher calls
        this once the save has been quiet for AHEAD seconds): if the window then ends with
        no event after it and the same bytes on disk, the reload applies this expansion
        instead of doing that work after the window. At 5,000 templates the work is 50-80 ms,
        which a save alone used to wait for on top of the window.

        Nothing is applied or reported here: a file that does not load is left for the
        reload, which reads it again and reports what it finds."""
        self.drop_prepared()
        if self.host.stopping or self.host.supervisor.pending_ops or self.expanding is not None:
            return
        digest = self._read_sources()  # before the load: a save in between cannot match it
        if digest is None or digest == self.config_bytes:
            return
        try:
            config = load_config(self.host.config.path, self.host.templates)
        except Exception:  # noqa: BLE001 - the reload at the window's end reads and reports it
            return
        cache = self._scratch()
        ahead = self.ahead = _Ahead(digest, config, Expansion(config, cache, STEP_SECONDS), cache)

        def expanded(job: Expansion) -> None:
            ahead.done = True
            log.debug("config save read ahead: applied as read if the file is unchanged when its window ends")
        self._step(ahead.job, expanded)

    def drop_prepared(self) -> None:
        """Another event touched the config: what was read ahead may not be what is applied."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None and not ahead.done:
            ahead.job.force_end()  # its remaining slices find it ended and stop

    def reload(self, origin: str, on_done: Callable[[dict[str, Any]], None] | None = None,
               digest: str | None = None) -> dict[str, Any] | None:
        """Read the config now, expand it in steps, apply the plan: the outcome, or None
        (then `on_done` gets it) when the expansion takes more than one step. A save read
        and expanded ahead (prepare) is applied as it is if the file still holds its bytes
        (`digest`: the sources' digest, when the caller has just read it)."""
        began = time.perf_counter()
        ahead = self.ahead
        self.drop_prepared()
        if (ahead is not None and ahead.done and origin.startswith("file")
                and ahead.digest == (digest if digest is not None else self._read_sources())):
            self.host.expansions = ahead.cache
            return self._apply_expansion(f"{origin}, read ahead", ahead.config, ahead.job, began)
        try:
            config = load_config(self.host.config.path, self.host.templates)
        except Exception as exc:  # noqa: BLE001 - a reload never takes the master down
            return self._reload_failed(origin, exc)
        outcome: list[dict[str, Any]] = []
        self.expanding = origin
        # No cyclic collection while a reload runs: parsing a 5,000-table file makes enough
        # objects to set off full collections over the whole fleet's state, which took as
        # long as the reload's own work. It runs again once the plan is applied.
        gc.disable()

        def applied(job: Expansion) -> None:
            self.expanding = None
            gc.enable()
            result = self._apply_expansion(origin, config, job, began)
            if on_done is not None and not first_step[0]:
                on_done(result)
            outcome.append(result)
            if not self.host.supervisor.pending_ops:
                self.idle()  # a reload queued behind this one, with nothing to wait for

        first_step = [True]
        self._step(Expansion(config, self.host.expansions, STEP_SECONDS), applied)
        first_step[0] = False
        return outcome[0] if outcome else None

    def _apply_expansion(self, origin: str, config: Config, job: Expansion, began: float) -> dict[str, Any]:
        try:
            specs = job.result()
            if specs:  # bound before anything changes: a failed bind leaves the fleet as it was
                self.host.spawner.send_sockets(self.host.listeners.bind_config(config.sockets, config.path))
        except Exception as exc:  # noqa: BLE001 - a reload never takes the master down
            return self._reload_failed(origin, exc)
        self._remember_file()
        if not specs:
            self.last_error = (f"{config.path}: the new config has no instances; refusing to "
                                      "stop everything (use `orch down` for that)")
            log.warning("reload (%s) refused: %s", origin, self.last_error)
            self.host.supervisor.events.emit(Happened("reload_failed", None, {"origin": origin,
                                                                              "error": self.last_error}))
            return {"applied": False, "error": self.last_error}
        scaler = getattr(self.host, "scaler", None)  # autoscaled cells run their first `count` replicas
        plan = reconcile(scaler.desired(specs) if scaler is not None else specs, self.host.supervisor.running_view())
        self.host.supervisor.events.emit(Happened("reload", None, {"origin": origin, **plan.counts()}))
        settings = self._apply_settings(config.settings)
        self.host.supervisor.apply(plan)
        self.host.supervisor.flush()  # the spawner starts on the new instances while we finish here
        self.host._release_sockets()  # sockets gone from the config and used by no instance
        self.host.config = config
        if self.host.watcher is not None:
            self.host.watcher.set_files(config.files, config.include_patterns)
        self.host.config_applied()
        self.last_error = None
        self.host.applied_at = time.time()
        self.count += 1
        took = (time.perf_counter() - began) * 1000
        self.last_seconds = took / 1000
        counts = plan.counts()
        log.info("reload (%s): +%d -%d ~%d =%d, %d kept, planned in %.1fms", origin, counts["start"],
                 counts["stop"], counts["restart"], counts["update"], counts["keep"], took)
        return {"applied": True, **counts, "planned_ms": round(took, 2), **({"settings": settings} if settings else {})}

    def _reload_failed(self, origin: str, exc: Exception) -> dict[str, Any]:
        if not isinstance(exc, ConfigError):
            log.exception("reload (%s): unexpected error", origin)
            exc = ConfigError([ConfigProblem(str(self.host.config.path), "", f"internal error: {exc!r}")])
        self.failures += 1
        self.last_error = str(exc)
        self._remember_file()
        log.error("reload (%s) failed; nothing changed, every process keeps running:\n%s", origin, exc)
        self.host.supervisor.events.emit(Happened("reload_failed", None, {"origin": origin, "error": str(exc)}))
        return {"applied": False, "error": f"reload failed, nothing changed:\n{exc}"}

    def _apply_settings(self, new: Settings) -> list[str]:
        """Apply the [orchestrator] settings that changed; a note per change for the reload's
        result, naming each key that could not be applied (and why)."""
        old = self.host.settings
        kept, notes = self.host.apply_live_settings(old, new)  # rebinding, moving (control/live.py)
        for key in Settings.__dataclass_fields__:
            before, after = getattr(old, key), getattr(new, key)
            if before == after or key in kept:
                continue
            if key in LIVE_SETTINGS:
                log.info("setting orchestrator.%s: %s -> %s", key, before, after)
                if not any(n.startswith(f"orchestrator.{key}:") for n in notes):
                    notes.append(f"orchestrator.{key}: {before} -> {after}")
            else:
                log.warning("setting orchestrator.%s changed (%s -> %s): takes effect only after "
                            "a restart of the master", key, before, after)
                notes.append(f"orchestrator.{key}: not applied, it needs a restart of the master; still {before}")
        if new.log_level != old.log_level:
            set_log_level(new.log_level)
        if new.check_interval != old.check_interval:
            self.host.limits.set_check_interval(new.check_interval)
        if new.watch != old.watch:
            if new.watch and self.host.watcher is None:
                self.host._start_watcher()
            elif not new.watch and self.host.watcher is not None:
                self.host.watcher.stop()
                self.host.watcher = None
        if self.host.watcher is not None:
            self.host.watcher.settle = new.settle
        live = {k: getattr(new, k) for k in LIVE_SETTINGS if k not in kept}
        self.host.settings = Settings(**{**old.__dict__, **live})
        return notes



class _Ahead:
    """A save read and expanded before its burst window ended (Reloader.prepare)."""

    def __init__(self, digest: str, config: Config, job: Expansion, cache: ExpansionCache) -> None:
        self.digest, self.config, self.job, self.cache = digest, config, job, cache
        self.done = False


def _outcome(job: Expansion, config: Config) -> tuple[Config, list[ProcessSpec]] | ConfigError:
    try:
        return config, job.result()
    except ConfigError as exc:
        return exc
