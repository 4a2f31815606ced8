"""The values a loaded config is made of: frozen `Config`, `Template`, `Settings` and
`Policy` (load.py builds them; tests/test_keys.py keeps their fields in step with the key
table)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hooks import HookDecl
from .scaling import BacklogDecl, Replicas, Scale
from .sockets import SocketDecl


@dataclass(frozen=True)
class Policy:
    """How an instance is supervised. Changing only these never restarts a process.
    Fields and defaults mirror the POLICY keys of `keys.KEYS` (tests/test_keys.py checks)."""

    restart: str = "always"
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    min_uptime: float = 5.0
    stop_signal: int = 15
    stop_timeout: float = 10.0
    kill_mode: str = "group"
    memory_soft: int | None = None
    memory_hard: int | None = None
    memory_measure: str = "rss"
    max_lifetime: float | None = None
    timeout: float | None = None
    max_requests: int | None = None
    rolling: bool = False
    max_unavailable: int = 1
    probes: tuple[Any, ...] = ()  # ProbeDecls (config/probes.py), targets not yet rendered
    after: tuple[str, ...] = ()  # templates to wait for (config/order.py, supervise/order.py)
    code_watch: tuple[str, ...] = ()  # globs whose save reloads a preloaded template's code
    scale: Scale = Scale()  # how an autoscaled template follows its backlog (config/scaling.py)
    backlog: BacklogDecl | None = None  # a plain command's backlog source, not yet rendered
    log_max_size: int = 50 * 2**20
    log_backups: int = 5


@dataclass(frozen=True, slots=True)  # slots: 5,000 of them live in the master's TemplateCache
class Template:
    """One validated `[workers.NAME]` table, defaults merged, not yet rendered.
    Fields mirror the non-policy `workers.*` keys of `keys.KEYS`."""

    name: str
    command: str | tuple[str, ...] | None
    target: str | None
    kwargs: tuple[tuple[str, Any], ...]
    name_pattern: str | None
    matrix: tuple[tuple[str, Any], ...]
    include: tuple[tuple[tuple[str, Any], ...], ...]
    exclude: tuple[tuple[tuple[str, Any], ...], ...]
    replicas: int | Replicas  # Replicas: autoscaled (config/scaling.py)
    env: tuple[tuple[str, Any], ...]
    inherit: bool
    cwd: str
    shell: bool
    preload: bool
    check_point: float
    pythonpath: tuple[str, ...]
    policy: Policy
    source: Path | None = None  # the file it was written in (an included file, or the config)
    sockets: tuple[str, ...] = ()  # names of [sockets.*], passed at fds 3, 4, ... in this order
    user: str | None = None  # run-as and process set-up: see config/production.py
    group: str | None = None
    groups: tuple[str, ...] | None = None
    env_file: tuple[str, ...] = ()
    rlimits: tuple[tuple[str, tuple[int, int]], ...] = ()
    umask: int | None = None
    stderr: str = "merge"


@dataclass(frozen=True)
class Settings:
    """The `[orchestrator]` table, paths resolved against the config file's folder.
    Fields and defaults mirror the `orchestrator.*` keys of `keys.KEYS`."""

    name: str
    control_socket: Path
    pidfile: Path
    log_dir: Path
    graceful_timeout: float = 10.0
    check_interval: float = 1.0
    cgroup: str = "auto"  # auto | off (spawn/cgroups.py)
    watch: bool = True
    settle: float = 2.0  # a save not closed by its writer applies after this long unchanged
    max_instances: int = 10_000
    log_level: str = "info"
    log_max_size: int = 50 * 2**20
    log_backups: int = 5
    metrics: str | None = None
    http: str | None = None  # the dashboard's HOST:PORT (web/)
    http_token_file: Path | None = None
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """A whole validated config file."""

    path: Path
    settings: Settings
    vars: tuple[tuple[str, Any], ...]
    templates: tuple[Template, ...]
    files: tuple[Path, ...] = field(default=())
    include_patterns: tuple[str, ...] = ()  # absolute globs: a new matching file is watched too
    sockets: tuple[SocketDecl, ...] = ()
    hooks: tuple[HookDecl, ...] = ()  # [[hooks]]: commands run on events (config/hooks.py)

    @functools.cached_property
    def folder(self) -> Path:
        return self.path.parent
