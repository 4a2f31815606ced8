"""`orch export --format supervisord`: a `[program:x]` per instance in one `[group:fleet]` (pure).

supervisord reads its file with configparser (`;` and `#` after whitespace start a comment),
then expands `%(name)s` in every value, then splits `command` like a POSIX shell and
`environment` with a non-POSIX lexer that keeps the quotes and strips them from both ends.
"""

from __future__ import annotations

import re
import signal

from ..expand.spec import ProcessSpec
from .common import Options, Output, bind_sockets, process_warnings, refuse, seconds, unexpressed
from .production import env_file_values, setup_warnings
from .probes import everything_lost, lost_lines

UNEXPRESSED = ("backoff_initial", "backoff_max", "memory_soft", "memory_hard", "max_lifetime",
               "timeout", "max_requests", "rolling", "max_unavailable")
AUTORESTART = {"always": "true", "on-failure": "unexpected", "never": "false"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.@+=-]")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote_word(word: str) -> str:
    """One argv element for supervisord's command: single-quoted POSIX shell text, with ';' and
    '#' backslash-escaped outside the quotes so configparser never sees a comment, and % doubled."""
    if not word:
        return "''"
    parts = []
    for piece in re.split(r"([;#'])", word):
        if piece in (";", "#", "'"):
            parts.append("\\" + piece)
        elif piece:
            parts.append("'" + piece + "'")
    # supervisord replaces the text %(here)s in included files before its own % expansion: a
    # '' between %% and ( keeps that text from ever appearing (the shell reads '' as nothing).
    return "".join(parts).replace("%", "%%").replace("%(", "%''(")


def _env_value(value: str) -> str:
    quote = '"' if '"' not in value else "'"
    return (quote + value + quote).replace("%", "%%")


def _check(specs: list[ProcessSpec], options: Options) -> None:
    """What supervisord's file format cannot carry: an error, never a silently different value."""
    refuse(specs, options, "supervisord", "a newline", re.compile("[\r\n]"), files=True)
    refuse(specs, options, "supervisord", "an environment value with both ' and \"",
           re.compile("^(?=.*')(?=.*\")", re.S), where="env", files=True)
    refuse(specs, options, "supervisord", "an environment value starting or ending with a quote",
           re.compile("^['\"]|['\"]$"), where="env", files=True)
    refuse(specs, options, "supervisord", "an environment value with whitespace before ; or #",
           re.compile(r"\s[;#]"), where="env", files=True)
    refuse(specs, options, "supervisord", "the text %(here)s in an environment value",
           re.compile(re.escape("%(here)s")), where="env", files=True)
    bad_keys = [s for s in specs if any(not _ENV_KEY.match(k) for k, _ in s.env)]
    refuse(bad_keys, options, "supervisord", "an environment name other than [A-Za-z_][A-Za-z0-9_]*",
           re.compile(""), where="env")
    bad_files = [s for s in specs if any(not _ENV_KEY.match(k) for k, _ in s.file_env)]
    refuse(bad_files, options, "supervisord", "an env file name other than [A-Za-z_][A-Za-z0-9_]*",
           re.compile(""), where="argv-none", files=True)


def _program(spec: ProcessSpec, name: str, options: Options) -> list[str]:
    policy = spec.policy
    env = [("ORCH_INSTANCE", spec.name)] + env_file_values(spec) + list(spec.env)
    log = str(options.log_dir / f"{spec.name}.log").replace("%", "%%")
    group = "true" if policy.kill_mode == "group" else "false"
    return [
        f"[program:{name}]",
        f"command={' '.join(quote_word(a) for a in spec.argv)}",
        f"directory={spec.cwd.replace('%', '%%')}",
        f"environment={','.join(f'{k}={_env_value(v)}' for k, v in env)}",
        "autostart=true",
        f"autorestart={AUTORESTART[policy.restart]}",
        f"startsecs={seconds(policy.min_uptime)}",
        "startretries=1000000",  # orch retries for ever (with backoff); supervisord would give up
        f"stopsignal={signal.Signals(policy.stop_signal).name[3:]}",
        f"stopwaitsecs={seconds(policy.stop_timeout)}",
        f"stopasgroup={group}",
        "killasgroup=true",
        f"stdout_logfile={log}",
        f"stdout_logfile_maxbytes={policy.log_max_size}",
        f"stdout_logfile_backups={policy.log_backups}",
    ] + _stderr(spec, log) + _identity(spec) + [""]


def _stderr(spec: ProcessSpec, log: str) -> list[str]:
    if spec.stderr == "merge":
        return ["redirect_stderr=true"]
    target = "NONE" if spec.stderr == "discard" else log[:-4] + ".stderr.log"
    return ["redirect_stderr=false", f"stderr_logfile={target}",
            f"stderr_logfile_maxbytes={spec.policy.log_max_size}",
            f"stderr_logfile_backups={spec.policy.log_backups}"]


def _identity(spec: ProcessSpec) -> list[str]:
    """user= (supervisord sets the user's own groups) and umask=."""
    lines = [f"user={spec.run_as.user}"] if spec.run_as is not None and spec.run_as.user else []
    return lines + ([f"umask={spec.umask:03o}"] if spec.umask is not None else [])


def program_name(instance: str) -> str:
    """An instance name as a supervisord program name (no ':' or spaces, which its CLI splits on)."""
    return _SAFE_NAME.sub("_", instance)


def export(specs: list[ProcessSpec], options: Options) -> Output:
    """One file, `supervisord.conf`, holding the group and its programs."""
    _check(specs, options)
    specs = bind_sockets(specs, options, "supervisord")
    # supervisord refuses to start any program (the whole config) while a stdout_logfile's
    # folder is missing: the export creates it.
    out = Output(warnings=unexpressed("supervisord", specs, UNEXPRESSED)
                 + process_warnings("supervisord", specs, False, sockets="bound")
                 + setup_warnings("supervisord", specs, ("user", "env_file", "umask", "stderr"), {
                     "group": "supervisord runs a program with its user's primary group; left out",
                     "groups": "supervisord gives a program its user's own groups; left out",
                     "rlimits": "supervisord sets only its own minfds/minprocs; left out"})
                 + lost_lines("supervisord", specs, everything_lost),
                 folders=[options.log_dir])
    names = [program_name(s.name) for s in specs]
    if len(set(names)) != len(names):
        refuse(specs, options, "supervisord", "instance names that differ only in characters it "
               "cannot use in a program name", re.compile(""), where="name")
    lines = [f"; orch export --format supervisord of {options.config.name}: include this file",
             "; from supervisord.conf ([include] files = ...)", ""]
    for spec, name in zip(specs, names):
        lines += _program(spec, name, options)
    group = program_name(options.fleet)
    lines += [f"[group:{group}]", f"programs={','.join(names)}", ""]
    out.files["supervisord.conf"] = "\n".join(lines)
    return out
