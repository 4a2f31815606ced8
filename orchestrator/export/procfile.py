"""`orch export --format procfile`: `name: command` per instance, for honcho and foreman (pure).

Both run each command line with /bin/sh, in their own folder and environment, so a line is
`cd DIR && exec env [-i] K=V... ARGV`, every word shell-quoted: the program gets exactly its
argv, environment additions and working directory.
"""

from __future__ import annotations

import re
import shlex

from ..expand.spec import ProcessSpec
from .production import setup_warnings
from .common import Options, Output, bind_sockets, process_warnings, refuse, unexpressed
from .probes import everything_lost, lost_lines

UNEXPRESSED = ("restart", "backoff_initial", "backoff_max", "min_uptime", "stop_signal",
               "stop_timeout", "kill_mode", "memory_soft", "memory_hard", "max_lifetime", "timeout",
               "max_requests", "rolling", "max_unavailable", "log_max_size", "log_backups")
_ILLEGAL = re.compile(r"[^A-Za-z0-9_-]")  # honcho's and foreman's Procfile grammar: \w and -
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def process_name(instance: str) -> str:
    """An instance name made legal as a Procfile process type."""
    return _ILLEGAL.sub("_", instance)


def command_line(spec: ProcessSpec) -> str:
    """The shell line that runs the spec as `orch up` would."""
    env = ["env"] + ([] if spec.inherit_env else ["-i"]) + ["--"]
    env += [f"{k}={v}" for k, v in (("ORCH_INSTANCE", spec.name),) + spec.env]
    words = env + list(spec.argv)
    return f"cd {shlex.quote(spec.cwd)} && exec " + " ".join(shlex.quote(w) for w in words)


def export(specs: list[ProcessSpec], options: Options) -> Output:
    """One file, `Procfile`."""
    refuse(specs, options, "a Procfile", "a newline (one line per process)", re.compile("[\r\n]"))
    specs = bind_sockets(specs, options, "a Procfile")
    # env(1) would read a program name holding '=' as one more variable.
    refuse([s for s in specs if "=" in s.argv[0]], options, "a Procfile", "'=' in the program name",
           re.compile("="), where="argv")
    bad_keys = [s for s in specs if any(not _ENV_KEY.match(k) for k, _ in s.env)]
    refuse(bad_keys, options, "a Procfile", "an environment name other than [A-Za-z_][A-Za-z0-9_]*",
           re.compile(""), where="env")
    names = [process_name(s.name) for s in specs]
    if len(set(names)) != len(names):
        refuse(specs, options, "a Procfile", "instance names that differ only in characters a "
               "process name cannot hold", re.compile(""), where="name")
    out = Output(warnings=unexpressed("a Procfile", specs, UNEXPRESSED) + setup_warnings("a Procfile", specs, ())
                 + process_warnings("a Procfile", specs, True, sockets="bound")
                 + lost_lines("a Procfile", specs, everything_lost))
    out.files["Procfile"] = "".join(f"{n}: {command_line(s)}\n" for n, s in zip(names, specs))
    return out
