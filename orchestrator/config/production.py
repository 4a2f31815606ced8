"""The keys that make orch deployable as root, as far as the config can check them: resource
limits (`rlimits`), and what this host's kernel would refuse of them.

Users and groups are templated, so they are resolved at expansion (`expand/identity.py`);
env files are read there too (`expand/envfile.py`).
"""

from __future__ import annotations

import os
import resource
from typing import Any

from ..units import parse_size
from .fields import ValueType, type_name

# rlimits key -> (RLIMIT_* number, whether it counts bytes: then "64MiB" is accepted too)
RLIMITS_BY_NAME: dict[str, tuple[int, bool]] = {
    "as": (resource.RLIMIT_AS, True), "core": (resource.RLIMIT_CORE, True),
    "cpu": (resource.RLIMIT_CPU, False), "data": (resource.RLIMIT_DATA, True),
    "fsize": (resource.RLIMIT_FSIZE, True), "locks": (getattr(resource, "RLIMIT_LOCKS", 10), False),
    "memlock": (resource.RLIMIT_MEMLOCK, True), "msgqueue": (resource.RLIMIT_MSGQUEUE, True),
    "nice": (resource.RLIMIT_NICE, False), "nofile": (resource.RLIMIT_NOFILE, False),
    "nproc": (resource.RLIMIT_NPROC, False), "rss": (resource.RLIMIT_RSS, True),
    "rtprio": (resource.RLIMIT_RTPRIO, False), "rttime": (resource.RLIMIT_RTTIME, False),
    "sigpending": (resource.RLIMIT_SIGPENDING, False), "stack": (resource.RLIMIT_STACK, True),
}
# The name systemd gives each limit (LimitNOFILE=, ...), for the systemd export.
SYSTEMD_NAMES = {"as": "AS", "core": "CORE", "cpu": "CPU", "data": "DATA", "fsize": "FSIZE",
                 "locks": "LOCKS", "memlock": "MEMLOCK", "msgqueue": "MSGQUEUE", "nice": "NICE",
                 "nofile": "NOFILE", "nproc": "NPROC", "rss": "RSS", "rtprio": "RTPRIO",
                 "rttime": "RTTIME", "sigpending": "SIGPENDING", "stack": "STACK"}
UNLIMITED = resource.RLIM_INFINITY


def _one(name: str, v: object) -> int:
    """One bound: a whole number, "unlimited", or (for a limit in bytes) a size like "64MiB"."""
    if v == "unlimited" or v == "infinity":
        return UNLIMITED
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError(f"rlimits.{name}: expected a number or \"unlimited\", got {type_name(v)}")
    if isinstance(v, str):
        if not RLIMITS_BY_NAME[name][1]:
            raise ValueError(f"rlimits.{name}: expected a number or \"unlimited\", got {v!r}")
        v = parse_size(v)
    if v < 0 or v >= 2**63:
        raise ValueError(f"rlimits.{name}: must be from 0 to 2**63-1 or \"unlimited\", got {v}")
    return v


def parse_rlimits(v: object) -> dict[str, tuple[int, int]]:
    """`{ nofile = 65536, core = "unlimited", stack = [ "8MiB", "64MiB" ] }` -> name: (soft,
    hard). One value sets both; a [soft, hard] pair sets them apart (pure)."""
    if not isinstance(v, dict):
        raise ValueError(f"expected a table like {{ nofile = 65536 }}, got {type_name(v)}")
    limits: dict[str, tuple[int, int]] = {}
    for name, value in v.items():
        if name not in RLIMITS_BY_NAME:
            from difflib import get_close_matches
            close = get_close_matches(name, RLIMITS_BY_NAME, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (one of {', '.join(sorted(RLIMITS_BY_NAME))})"
            raise ValueError(f"unknown resource limit {name!r}{hint}")
        if isinstance(value, list):
            if len(value) != 2:
                raise ValueError(f"rlimits.{name}: expected one value or [soft, hard]")
            soft, hard = _one(name, value[0]), _one(name, value[1])
        else:
            soft = hard = _one(name, value)
        if _above(soft, hard):
            raise ValueError(f"rlimits.{name}: the soft limit {value[0]!r} is above the hard one")
        limits[name] = (soft, hard)
    return limits


def _above(a: int, b: int) -> bool:
    """a > b, with RLIM_INFINITY as the largest value (it is -1 on some systems)."""
    if a == UNLIMITED:
        return b != UNLIMITED
    return b != UNLIMITED and a > b


RLIMITS = ValueType("table of resource limits", parse_rlimits, {
    "type": "object", "additionalProperties": False,
    "properties": {name: {"anyOf": [
        {"type": "integer", "minimum": 0}, {"type": "string"},
        {"type": "array", "minItems": 2, "maxItems": 2}]} for name in RLIMITS_BY_NAME}})


def rlimit_problems(limits: dict[str, tuple[int, int]]) -> list[tuple[str, str]]:
    """(key, message) for each limit this host's kernel would refuse the master when it
    applies it in a child: a hard limit above the master's own unless orch runs as root,
    and an open-files limit above fs.nr_open (which even root cannot pass)."""
    found = []
    root = os.geteuid() == 0
    for name, (soft, hard) in limits.items():
        number = RLIMITS_BY_NAME[name][0]
        if name == "nofile":
            ceiling = _nr_open()
            if ceiling is not None and (_above(hard, ceiling)):
                found.append((name, f"{_show(hard)} is above the kernel's fs.nr_open ({ceiling}); "
                              "raise that sysctl or the limit cannot be set"))
                continue
        if not root:
            own = resource.getrlimit(number)[1]
            if _above(hard, own):
                found.append((name, f"{_show(hard)} is above the master's own hard limit ({_show(own)}); "
                              "only a master running as root can raise it"))
    return found


def _show(value: int) -> str:
    return "unlimited" if value == UNLIMITED else str(value)


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def check_template(clean: dict[str, Any], prefix: str, problems: Any) -> None:
    """Host checks of a template's parsed values, each a located problem."""
    for name, message in rlimit_problems(clean.get("rlimits") or {}):
        problems.add(f"{prefix}rlimits.{name}", message)
