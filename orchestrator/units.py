"""Parsing of human-written durations, byte sizes and signal names (pure)."""

from __future__ import annotations

import math
import re
import signal

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

# The longest duration any key accepts: a timer further out than this is a typo, and a
# number this size stays exact as a float (a 400-digit duration was infinity).
MAX_DURATION = 10 * 365 * 86400.0

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, None: 1,
}


def parse_duration(value: object) -> float:
    """Seconds from `"250ms"`, `"10s"`, `"5m"`, `"6h"`, `"1d"` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"10s\", got {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value) or value < 0:
            raise ValueError(f"a duration cannot be negative, got {_short(value)}")
        return _bounded(float(value) if value <= MAX_DURATION else math.inf, value)
    if isinstance(value, str) and len(value) <= 1000:
        match = _DURATION.match(value)
        if match:
            return _bounded(float(match.group(1)) * _DURATION_UNITS[match.group(2)], value)
    raise ValueError(f"expected a duration like \"250ms\", \"10s\", \"5m\" or a number of seconds, "
                     f"got {_short(value)}")


def _bounded(seconds: float, written: object) -> float:
    if not seconds <= MAX_DURATION:  # also inf
        raise ValueError(f"a duration can be at most 10 years, got {_short(written)}")
    return seconds


def _short(value: object, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters: an error never echoes a huge value in full."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_size(value: object) -> int:
    """Bytes from `"200MiB"`, `"1GB"`, `"512KiB"` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return _bounded_size(value, value)
    if isinstance(value, str) and len(value) <= 1000:
        match = _SIZE.match(value)
        if match:
            unit = match.group(2).lower() if match.group(2) else None
            return _bounded_size(float(match.group(1)) * _SIZE_UNITS[unit], value)
    raise ValueError(f"expected a size like \"200MiB\" or a number of bytes, got {_short(value)}")


MAX_SIZE = 2**60  # an exbibyte: past any machine, and still exact as an int


def _bounded_size(size: float, written: object) -> int:
    if not size <= MAX_SIZE:  # also inf
        raise ValueError(f"a size can be at most 1EiB, got {_short(written)}")
    return int(size)


def parse_signal(value: object) -> signal.Signals:
    """A signal from `"TERM"`, `"SIGTERM"` or its number."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value)
        except ValueError:
            pass
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signal.Signals.__members__:
            return signal.Signals[name]
    raise ValueError(f"expected a signal name like \"TERM\" or \"INT\", got {value!r}")


def format_duration(seconds: float) -> str:
    """A short human form: 850ms, 12s, 3m04s, 2h05m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def format_size(size: int) -> str:
    """A short human form of a byte count: 12.3M."""
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"
