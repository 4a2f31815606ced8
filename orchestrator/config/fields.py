"""Value types of the config's keys: each parses a TOML value and says what it accepts as a
JSON Schema fragment, side by side so the validator and the schema cannot drift (pure).

A parser takes a TOML value and returns the clean value or raises ValueError with a message a
user can act on. The keys that use these types are declared once, in `keys.py`.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from ..units import parse_duration, parse_signal, parse_size


@dataclass(frozen=True)
class ValueType:
    """One kind of value: its parser, its JSON Schema and its name in the docs."""

    name: str
    parse: Callable[[object], Any]
    schema: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def type_name(v: object) -> str:
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type_name(v)}")
    return v


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {type_name(v)}")
    return v


def int_at_least(low: int, high: int = 2**31 - 1) -> ValueType:
    """A whole number from `low` to `high` (by default, what fits a C int)."""
    def parse(v: object) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {type_name(v)}")
        if v < low:
            raise ValueError(f"must be at least {low}, got {v if v > -10**30 else 'a smaller number'}")
        if v > high:
            raise ValueError(f"must be at most {high:,}, got {v if v < 10**30 else 'a larger number'}")
        return v
    return ValueType(f"integer >= {low}" if high == 2**31 - 1 else f"integer from {low} to {high:,}", parse,
                     {"type": "integer", "minimum": low, "maximum": high})


def one_of(*choices: str) -> ValueType:
    """One of a fixed set of strings."""
    def parse(v: object) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
        return v  # type: ignore[return-value]
    return ValueType(" | ".join(choices), parse, {"enum": list(choices)})


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


def _bind(v: object) -> str:
    text = _str(v)
    if text.startswith("unix:"):
        if not text[5:]:
            raise ValueError("expected a path after unix:, like \"unix:/run/app.sock\"")
        return text
    host, sep, port = text.rpartition(":")
    if host.startswith("[") != host.endswith("]"):
        host = ""
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host.strip("[]"):
        raise ValueError(f"expected \"HOST:PORT\", \"[IPV6]:PORT\" or \"unix:/path\", got {text!r}")
    return text


def _file_mode(v: object) -> int:
    text = _str(v)
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise ValueError(f"expected an octal mode like \"0660\", got {text!r}")
    return int(text, 8)


def _human(seconds: float) -> str:
    """A bound as people write it: 10ms, 1h, 365d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def duration(low: float = 0.0, high: float = 86400.0, positive: bool = False) -> ValueType:
    """A duration from `low` (exclusive of 0 when `positive`) to `high` seconds. Every timer
    the master arms comes from one of these, so none is infinite or past what the selector
    takes (the loop also caps each wait: loop.MAX_WAIT)."""
    def parse(v: object) -> float:
        seconds = parse_duration(v)
        if positive and seconds <= 0:
            raise ValueError(f"must be longer than zero, got {v!r}")
        if seconds < low:
            raise ValueError(f"must be at least {_human(low)}, got {v!r}")
        if seconds > high:
            raise ValueError(f"must be at most {_human(high)}, got {v!r}")
        return seconds
    number: dict[str, Any] = {"type": "number", "maximum": high}
    number.update({"exclusiveMinimum": 0} if positive and not low else {"minimum": low})
    text = (_NONZERO_TEXT + _DURATION_TEXT[1:]) if positive else _DURATION_TEXT
    name = f"duration{' > 0' if positive else ''} up to {_human(high)}"
    return ValueType(name, parse, {"anyOf": [{"type": "string", "pattern": text}, number]})


def _signal(v: object) -> int:
    return int(parse_signal(v))


def _any_case(word: str) -> str:
    """A regex matching `word` in any letter case, portable to every schema engine (no (?i))."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


# The patterns mirror units.py's regular expressions; tests/test_schema.py checks them on samples.
_NUMBER = r"\d+(\.\d+)?"
_DURATION_TEXT = rf"^\s*{_NUMBER}\s*(ms|s|m|h|d)?\s*$"
_NONZERO_TEXT = r"^(?!\s*0*(\.0*)?\s*(ms|s|m|h|d)?\s*$)"
_SIZE_TEXT = rf"^\s*{_NUMBER}\s*(([KkMmGgTt][Ii]?)?[Bb])?\s*$"
_PORT = r"([1-9]\d{0,3}|[1-5]\d{4}|6[0-4]\d{3}|65[0-4]\d{2}|655[0-2]\d|6553[0-5])"
_SIGNALS = sorted(s.name[3:] for s in signal.Signals if not s.name.startswith("SIG_"))
_SIGNAL_TEXT = rf"^\s*({_any_case('SIG')})?({'|'.join(_any_case(s) for s in _SIGNALS)})\s*$"

STRING = ValueType("string", _str, {"type": "string"})
PATH = ValueType("path", _str, {"type": "string"})  # resolved against the config's folder
BOOL = ValueType("boolean", _bool, {"type": "boolean"})
COMMAND = ValueType("string or array of strings", _command, {"anyOf": [
    {"type": "string", "pattern": r"\S"},
    {"type": "array", "items": {"type": "string"}, "minItems": 1}]})
TABLE = ValueType("table", _table, {"type": "object"})
TABLES = ValueType("array of tables", _list_of_tables, {"type": "array", "items": {"type": "object"}})
STRINGS = ValueType("array of strings", _str_list, {"type": "array", "items": {"type": "string"}})
ADDRESS = ValueType("HOST:PORT", _address, {"type": "string", "pattern": rf"^.+:{_PORT}$"})
DAY = 86400.0
DURATION = duration()
POSITIVE_DURATION = duration(positive=True)
SIZE = ValueType("size", parse_size, {"anyOf": [
    {"type": "string", "pattern": _SIZE_TEXT}, {"type": "integer", "minimum": 0}]})
SIGNAL = ValueType("signal", _signal, {"anyOf": [
    {"type": "string", "pattern": _SIGNAL_TEXT},
    {"enum": sorted({int(s) for s in signal.Signals})}]})
BIND = ValueType("HOST:PORT, [IPV6]:PORT or unix:PATH", _bind, {"type": "string", "anyOf": [
    {"pattern": r"^unix:.+$"}, {"pattern": rf"^.+:{_PORT}$"}]})
FILE_MODE = ValueType("octal file mode", _file_mode, {"type": "string", "pattern": r"^0?[0-7]{3}$"})
UMASK = ValueType("octal umask", _file_mode, {"type": "string", "pattern": r"^0?[0-7]{3}$"})


def _paths(v: object) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip("- ") for x in v):
        raise ValueError("expected a path or an array of paths (a leading '-': the file may be missing)")
    return tuple(v)


PATHS = ValueType("path or array of paths", _paths, {"anyOf": [
    {"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1}}]})
