"""The one declaration of every workers.toml key: path, type, default, kind and a one-line doc.

Validation (`load.py`), the merging of [defaults], what a change restarts (`expand/spec.py`,
the master's live settings), the JSON Schema (`schema.py`) and man/workers.toml.5 (`docs.py`)
are all derived from `KEYS`; tests/test_keys.py keeps the dataclasses in step with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from enum import Enum
from typing import Any, Callable

from .fields import (ADDRESS, BIND, BOOL, COMMAND, DAY, DURATION, FILE_MODE, PATH, PATHS, POSITIVE_DURATION,
                     SIGNAL, SIZE, STRING, STRINGS, TABLE, TABLES, UMASK, ValueType, duration, int_at_least,
                     one_of)
from .hooks import ARGV, EVENT_KINDS, EVENT_LIST
from .order import AFTER
from .probes import PROBES
from .scaling import BACKLOG, REPLICAS, SCALE
from .production import RLIMITS

_UNPARSED = object()


class Kind(Enum):
    """What changing a key does to a running fleet."""

    PROCESS = "restarts the instance"
    FLEET = "starts or stops instances"
    POLICY = "applied in place"
    LIVE = "applied live"
    RESTART = "needs a restart of the master"


@dataclass(frozen=True)
class Key:
    """One key. `default` is written as in TOML (None: unset); `field` names the dataclass
    field that holds it; `spec` the ProcessSpec identity field a PROCESS key feeds."""

    path: str
    type: ValueType
    default: Any
    kind: Kind
    doc: str
    example: str
    field: str = ""
    spec: str = ""
    default_from: str = ""
    template_only: bool = False  # not allowed in [defaults]

    # Derived once per key (cached_property writes the instance dict, past the frozen
    # __setattr__): loading a config reads them for every key of every template, and at
    # 5,000 templates recomputing them was a third of a reload.
    @cached_property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @cached_property
    def attr(self) -> str:
        """The dataclass field: explicit, or the path below the section joined with '_'."""
        return self.field or "_".join(self.path.split(".")[1 if self.section == "orchestrator" else 2:])

    @cached_property
    def section(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def value(self) -> Any:
        """The default as the loaded value (parsed), None when unset; a fresh object when it
        is a table or an array (callers may change it)."""
        parsed = self.__dict__.get("_value", _UNPARSED)
        if parsed is _UNPARSED:
            parsed = None if self.default is None else self.type.parse(self.default)
            if isinstance(parsed, (dict, list, set)):
                return parsed
            self.__dict__["_value"] = parsed
        return parsed


def _w(name: str, *args: Any, **kwargs: Any) -> Key:
    return Key(f"workers.*.{name}", *args, **kwargs)


def _o(name: str, *args: Any, **kwargs: Any) -> Key:
    return Key(f"orchestrator.{name}", *args, **kwargs)


def _s(name: str, *args: Any, **kwargs: Any) -> Key:
    return Key(f"sockets.*.{name}", *args, **kwargs)


def _h(name: str, *args: Any, **kwargs: Any) -> Key:
    return Key(f"hooks.*.{name}", *args, **kwargs)


P, F, S, L, R = Kind.PROCESS, Kind.FLEET, Kind.POLICY, Kind.LIVE, Kind.RESTART
KEYS: tuple[Key, ...] = (
    _w("command", COMMAND, None, P, "the program and its arguments (split like a shell, no shell)",
       '"app --queue {{ queue }}"', spec="argv"),
    _w("target", STRING, None, P, "a Python worker class, module:Class, instead of command",
       '"app.workers:QueueWorker"', spec="python"),
    _w("kwargs", TABLE, {}, P, "keyword arguments for the target's constructor (rendered)",
       '{ queue = "{{ queue }}" }', spec="python"),
    _w("name", STRING, None, F, "instance name pattern (default: template name and matrix values)",
       '"consumer-{{ ip }}-{{ queue }}"', field="name_pattern", template_only=True),
    _w("matrix", TABLE, {}, F, "axes: arrays of values, or a Jinja expression giving one",
       '{ ip = ["10.0.0.1", "10.0.0.2"], queue = "{{ queues }}" }', template_only=True),
    _w("include", TABLES, [], F, "extra parameter combinations added to the matrix",
       '[{ ip = "10.0.0.3", queue = "urgent" }]', template_only=True),
    _w("exclude", TABLES, [], F, "matrix combinations left out (a partial match is enough)",
       '[{ ip = "10.0.0.2", queue = "queue2" }]', template_only=True),
    _w("replicas", REPLICAS, 1, F, "instances per matrix combination; a table scales each combination "
       "on its own queue's backlog, from min (0 allowed) to max, about backlog waiting messages per replica",
       '{ min = 1, max = 8, backlog = 200 }'),
    _w("env", TABLE, {}, P, "environment variables added (values rendered)",
       '{ REDIS_HOST = "{{ ip }}" }', spec="env"),
    _w("inherit", BOOL, True, P, "start from the master's environment (false: from an empty one)",
       "true", spec="inherit_env"),
    _w("cwd", STRING, ".", P, "working directory, relative to the config's folder", '"."', spec="cwd"),
    _w("shell", BOOL, False, P, "run command through /bin/sh -c, values escaped", "false",
       spec="argv"),
    _w("preload", BOOL, False, P, "import the target in a zygote and fork instances from it",
       "true", spec="python"),
    _w("check_point", duration(high=3600), 0, P, "how often a Python worker's loop checks for a stop",
       '"1s"', spec="python"),
    _w("pythonpath", STRINGS, [], P, "folders added to sys.path, relative to the config",
       '["src"]', spec="python"),
    _w("sockets", STRINGS, [], P, "listening sockets passed to each instance, from fd 3 in this order",
       '["web"]', spec="sockets"),
    _w("user", STRING, None, P, "run as this user (name or uid): its uid, its primary group unless "
       "group is set, and HOME, USER, LOGNAME and SHELL from its passwd entry unless env sets them; "
       "another user than the master's needs a master running as root", '"app"', spec="run_as"),
    _w("group", STRING, None, P, "run with this primary group (name or gid; default: the user's)",
       '"app"', spec="run_as"),
    _w("groups", STRINGS, None, P, "supplementary groups (names or gids; default: the user's own, as "
       "initgroups gives them; [] for none)", '["www-data"]', spec="run_as"),
    _w("env_file", PATHS, [], P, "KEY=value files added to the environment (env wins, later files win "
       "over earlier ones), relative to the config, rendered; a leading '-' lets the file be missing; "
       "watched, and a change restarts exactly the instances that read the file", '"secrets/{{ queue }}.env"',
       spec="env_files"),
    _w("rlimits", RLIMITS, {}, P, "resource limits set (soft and hard; [soft, hard] to set them apart) "
       "before exec: as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, "
       "rtprio, rttime, sigpending, stack", '{ nofile = 65536, core = "unlimited" }', spec="rlimits"),
    _w("umask", UMASK, None, P, "the file mode creation mask (default: the master's)", '"022"', spec="umask"),
    _w("stderr", one_of("merge", "separate", "discard"), "merge", P,
       "merge: into the instance's log with stdout; separate: into NAME.stderr.log beside it, rotated "
       "alike; discard: to /dev/null", '"separate"', spec="stderr"),
    _w("restart", one_of("always", "on-failure", "never"), "always", S,
       "when an exited instance is started again", '"on-failure"'),
    _w("backoff", TABLE, {}, S, "the delay before a restart after a quick exit",
       '{ initial = "1s", max = "60s" }'),
    _w("backoff.initial", DURATION, "1s", S, "the first delay; doubles on each quick exit", '"1s"'),
    _w("backoff.max", DURATION, "60s", S, "the longest delay", '"60s"'),
    _w("min_uptime", DURATION, "5s", S, "up this long counts as started (resets the backoff)",
       '"5s"'),
    _w("stop_signal", SIGNAL, "TERM", S, "the signal that asks an instance to stop", '"INT"'),
    _w("stop_timeout", DURATION, "10s", S, "how long a stop waits before SIGKILL to the whole tree", '"10s"'),
    _w("kill_mode", one_of("group", "mixed"), "group", S,
       "stop signal to every process of the instance's tree, or to the main process only "
       "(SIGKILL always reaches the whole tree)",
       '"mixed"'),
    _w("memory", TABLE, {}, S, "memory limits on the RSS of the instance's process tree",
       '{ soft = "200MiB", hard = "300MiB" }'),
    _w("memory.soft", SIZE, None, S, "over it twice in a row: graceful restart", '"200MiB"'),
    _w("memory.hard", SIZE, None, S, "over it once: SIGKILL and restart (acts while stopping too)", '"300MiB"'),
    _w("memory.measure", one_of("rss", "pss", "uss"), "rss", S,
       "what the limits count: rss (every page mapped), pss (shared pages divided among their "
       "users: fair to workers forked from a preload zygote), uss (private pages only)", '"pss"'),
    _w("max_lifetime", duration(high=365 * DAY, positive=True), None, S, "recycle after this long (up to 10% early)",
       '"6h"'),
    _w("timeout", POSITIVE_DURATION, None, S,
       "a request (or the watchdog keep-alive) may take this long (notify protocol)", '"30s"'),
    _w("max_requests", int_at_least(1), None, S, "recycle after this many requests (notify protocol)",
       "1000"),
    _w("rolling", BOOL, False, S, "restart changed instances in batches, each ready before the next",
       "true"),
    _w("max_unavailable", int_at_least(1), 1, S, "the batch size of a rolling restart", "2"),
    _w("probes", PROBES, {}, S, "health probes, each { http = URL | tcp = \"HOST:PORT\" | exec = [argv] | notify = true | "
       "\"watchdog\", period, timeout, failures, successes, status }: startup (must pass before the others count), readiness (decides "
       "READY), liveness (restarts the instance after failures in a row); targets are rendered; an exec "
       "probe passes on exit 0, runs with the instance's env, cwd and user, and is killed at its timeout; "
       "notify = true passes once the process said READY=1, notify = \"watchdog\" while it says WATCHDOG=1 "
       "at least every period",
       '{ readiness = { http = "http://127.0.0.1:{{ 9000 + replica }}/health", period = "2s" } }'),
    _w("after", AFTER, [], S, "templates whose every instance must be ready (a restart = \"never\" one: "
       "exited 0) before an instance of this one starts; a cycle is an error; a change orders only what "
       "starts from then on", '["redis", "migrate"]', template_only=True),
    _w("code_watch", STRINGS, [], S, "globs of files, relative to the config (** for any depth), whose save "
       "gives a preload = true template's instances the new code as `orch reload --code template:NAME` "
       "does: fresh zygotes, then a rolling move onto them; an import error moves nothing",
       '["app/**/*.py"]'),
    _w("scale", SCALE, {}, S, "how an autoscaled template follows its backlog: up once the demand held "
       "up_after (default 2s), down once lower demand held down_after (default 60s), at most step (default 2) "
       "replicas a second; a down step stops the highest replicas as a reload does",
       '{ up_after = "2s", down_after = "60s", step = 2 }'),
    _w("backlog", BACKLOG, None, S, "where an autoscaled template that is not one of orch's consumers reads "
       "its backlog, rendered per combination: { redis = URL, list = KEY } (or stream = KEY, group = G), "
       "{ beanstalkd = URL, tube = T } or { command = [argv] } printing an integer, each with per = messages "
       "per replica", '{ redis = "redis://127.0.0.1:6379/0", list = "jobs:{{ queue }}", per = 100 }'),
    _w("log_max_size", SIZE, "50MiB", S, "rotate the instance's log at this size", '"50MiB"',
       default_from="orchestrator.log_max_size"),
    _w("log_backups", int_at_least(0), 5, S, "rotated logs kept", "5",
       default_from="orchestrator.log_backups"),
    _o("name", STRING, None, L, "the fleet's name (default: the config file's or folder's name); a change "
       "renames the master's process title and status",
       '"queue-consumers"'),
    # {stem} is the config file's name without its extension: two configs in one folder
    # get a master each (web.toml: .orch/web/orch.sock), never one another's.
    _o("control_socket", PATH, ".orch/{stem}/orch.sock", L,
       "the control socket, relative to the config; {stem} is the config file's name without "
       "its extension, so each config in a folder has its own master; a change listens at the new "
       "path before the old one closes", '".orch/orch.sock"'),
    _o("pidfile", PATH, ".orch/{stem}/orch.pid", L,
       "the master's pid file (master.log and the state file go beside it), relative to the "
       "config; {stem} as for control_socket; a change locks the new file before the old one goes", '".orch/orch.pid"'),
    _o("log_dir", PATH, ".orch/{stem}/logs", L, "instance logs, relative to the config; {stem} as "
       "for control_socket; after a change each log continues in the new folder at its next write", '".orch/logs"'),
    _o("graceful_timeout", DURATION, "10s", L, "how long a shutdown waits for instances before SIGKILL",
       '"10s"'),
    _o("check_interval", duration(0.01, 3600, positive=True), "1s", L, "memory sampling period", '"1s"'),
    _o("cgroup", one_of("auto", "off"), "auto", R, "auto: an instance with a memory limit runs in a cgroup "
       "of its own where the kernel lets the master create them (root, or systemd Delegate=yes): the "
       "kernel enforces memory.hard and reports memory.soft, nothing is sampled, and no descendant can "
       "leave the instance; off: memory is sampled every check_interval", '"off"'),
    _o("settle", duration(0.01, 3600, positive=True), "2s", L,
       "a save its writer never closes (or a vanished config) is acted on after this long unchanged",
       '"2s"'),
    _o("watch", BOOL, True, L, "reload when the config (or an included file) is saved", "true"),
    _o("max_instances", int_at_least(1, 1_000_000), 10_000, L, "refuse a config expanding to more instances",
       "10000"),
    _o("log_level", one_of("debug", "info", "warning", "error"), "info", L, "the master's log level",
       '"info"'),
    _o("log_max_size", SIZE, "50MiB", L, "default log_max_size of every template", '"50MiB"'),
    _o("log_backups", int_at_least(0), 5, L, "default log_backups of every template", "5"),
    _o("metrics", ADDRESS, None, L, "serve Prometheus metrics on HOST:PORT; a change binds the new address "
       "before the old one closes (a failed bind keeps the old one)", '"127.0.0.1:9108"'),
    _o("http", ADDRESS, None, R, "serve the web dashboard on HOST:PORT (off unless set; give a loopback "
       "address unless other hosts must reach it); every request needs the token: orch dashboard prints the address with it",
       '"127.0.0.1:9200"'),
    _o("http_token_file", PATH, None, R, "the dashboard's token, read from this owner-only (0600) file; "
       "unset, one is generated into <control_socket>.http-token", '"/etc/orch/dashboard.token"'),
    _o("include", STRINGS, [], L, "globs of files adding [vars] and [workers.*], watched too",
       '["conf.d/*.toml"]'),
    _s("bind", BIND, None, P, "the address the master binds once; a change rolls its users onto it",
       '"127.0.0.1:8000"', spec="sockets"),
    _s("backlog", int_at_least(1), 1024, S, "the listen queue's length", "1024"),
    _s("mode", FILE_MODE, "0600", S, "permissions of a unix: socket's file", '"0660"'),
    _s("reset_after", duration(0.1, 3600, positive=True), "10s", S,
       "with no instance of its templates running this long, new connections are reset "
       "(clients fail at once) instead of waiting in the backlog", '"10s"'),
    _h("on", EVENT_LIST, None, L, "the event kinds that run the hook (see orch events): "
       + ", ".join(EVENT_KINDS), '["crashloop", "limit", "reload_failed"]'),
    _h("command", ARGV, None, L, "the argv run through the spawner, never a shell; each item is a Jinja "
       "template of the event's facts: event, instance, template, exit, code, signal, reason, pid and the "
       "rest of the event's keys; it gets ORCH_EVENT, ORCH_INSTANCE, ORCH_TEMPLATE, ORCH_EXIT and "
       "ORCH_REASON in its environment and the instance's last 20 log lines on stdin",
       '["notify-send", "orch: {{ instance }} {{ event }}", "{{ reason }}"]'),
    _h("throttle", DURATION, "5m", L, "after the hook ran for an instance and event kind, the same "
       "instance and kind do not run it again for this long (fleet-wide events: per kind)", '"5m"'),
    _h("timeout", duration(0.01, 3600, positive=True), "30s", L, "the hook's whole process group is "
       "killed after this long", '"30s"'),
)
del P, F, S, L, R

TOP_KEYS = ("orchestrator", "vars", "defaults", "sockets", "workers", "hooks")
BY_PATH: dict[str, Key] = {k.path: k for k in KEYS}


def _parsers(prefix: str) -> dict[str, Callable[[object], Any]]:
    """Parsers of the keys directly under `prefix` (no deeper), by name."""
    return {k.path[len(prefix):]: k.type.parse for k in KEYS
            if k.path.startswith(prefix) and "." not in k.path[len(prefix):]}


WORKER_KEYS = _parsers("workers.*.")
BACKOFF_KEYS = _parsers("workers.*.backoff.")
MEMORY_KEYS = _parsers("workers.*.memory.")
SUB_TABLES = {"backoff": BACKOFF_KEYS, "memory": MEMORY_KEYS}
ORCHESTRATOR_KEYS = _parsers("orchestrator.")
SOCKET_KEYS = _parsers("sockets.*.")
HOOK_KEYS = _parsers("hooks.*.")
TEMPLATE_ONLY = tuple(k.name for k in KEYS if k.template_only)
MERGED_TABLES = ("backoff", "memory", "env", "rlimits", "scale")  # [defaults] and a template merge these key by key
POLICY_KEYS = tuple(k for k in KEYS if k.section == "workers" and k.kind is Kind.POLICY and k.path.count(".") == 2
                    and k.name not in SUB_TABLES)
POLICY_SUB_KEYS = tuple(k for k in KEYS if k.section == "workers" and k.kind is Kind.POLICY
                        and k.path.count(".") == 3)
TEMPLATE_KEYS = tuple(k for k in KEYS if k.section == "workers" and k.kind is not Kind.POLICY)
SETTINGS_KEYS = tuple(k for k in KEYS if k.section == "orchestrator")
LIVE_SETTINGS = tuple(k.name for k in SETTINGS_KEYS if k.kind is Kind.LIVE)
IDENTITY_FIELDS = tuple(dict.fromkeys(k.spec for k in KEYS if k.spec))
