"""Field parsers for the config's keys, and the one table of which keys exist (pure).

Each parser takes a TOML value and returns the clean value or raises ValueError with a
message a user can act on. Validation, the man-page test and "did you mean" all read the
key tables below: one declaration per setting.
"""

from __future__ import annotations

from typing import Callable

from ..units import parse_duration, parse_signal, parse_size


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type_name(v)}")
    return v


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type_name(v)}")
    return v


def _int_at_least(low: int) -> Callable[[object], int]:
    def parse(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {type_name(v)}")
        if v < low:
            raise ValueError(f"must be at least {low}, got {v}")
        return v
    return parse


def _enum(*choices: str) -> Callable[[object], str]:
    def parse(v: object) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
        return v  # type: ignore[return-value]
    return parse


def _command(v: object) -> str | tuple[str, ...]:
    if isinstance(v, str):
        if not v.strip():
            raise ValueError("command is empty")
        return v
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise ValueError("expected a string or a non-empty array of strings")


def _table(v: object) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"expected a table, got {type_name(v)}")
    return v


def _list_of_tables(v: object) -> list:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise ValueError("expected an array of tables like [{ ip = \"10.0.0.1\" }]")
    return v


def _str_list(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected an array of strings")
    return tuple(v)


def _address(v: object) -> str:
    text = _str(v)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"expected HOST:PORT like \"127.0.0.1:9108\" or \"[::1]:9108\", got {text!r}")
    return text


def _positive_duration(v: object) -> float:
    seconds = parse_duration(v)
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, got {v!r}")
    return seconds


def _signal(v: object) -> int:
    return int(parse_signal(v))


def type_name(v: object) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


# One declaration per setting: validation, defaults and the docs' key list all read these.
WORKER_KEYS: dict[str, Callable[[object], object]] = {
    "command": _command, "target": _str, "kwargs": _table, "name": _str,
    "matrix": _table, "include": _list_of_tables, "exclude": _list_of_tables,
    "replicas": _int_at_least(1), "env": _table, "inherit": _bool, "cwd": _str,
    "shell": _bool, "preload": _bool, "check_point": parse_duration, "pythonpath": _str_list,
    "restart": _enum("always", "on-failure", "never"), "backoff": _table,
    "min_uptime": parse_duration, "stop_signal": _signal, "stop_timeout": parse_duration,
    "kill_mode": _enum("group", "mixed"),
    "memory": _table, "max_lifetime": _positive_duration, "timeout": _positive_duration,
    "max_requests": _int_at_least(1), "rolling": _bool, "max_unavailable": _int_at_least(1),
    "log_max_size": parse_size, "log_backups": _int_at_least(0),
}
BACKOFF_KEYS = {"initial": parse_duration, "max": parse_duration}
MEMORY_KEYS = {"soft": parse_size, "hard": parse_size}
ORCHESTRATOR_KEYS: dict[str, Callable[[object], object]] = {
    "name": _str, "control_socket": _str, "pidfile": _str, "log_dir": _str,
    "graceful_timeout": parse_duration, "check_interval": _positive_duration, "watch": _bool,
    "max_instances": _int_at_least(1), "log_level": _enum("debug", "info", "warning", "error"),
    "log_max_size": parse_size, "log_backups": _int_at_least(0), "metrics": _address,
    "include": _str_list,
}
TOP_KEYS = ("orchestrator", "vars", "defaults", "workers")
