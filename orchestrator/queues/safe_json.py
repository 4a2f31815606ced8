"""JSON read from a queue, where anyone can write: strict UTF-8, no NaN or Infinity, no number
that overflows a float, and a bound on nesting checked *before* decoding.

Why the bound comes first: `json.loads` recurses once per level and raises RecursionError
near 1,000 levels (a 2 KB message is enough); a worker that let that escape died on every
delivery of the message. The scan below costs one C-level count in the common case.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any


class JSONRejected(ValueError):
    """Bytes that are not JSON this code accepts; the message says why, for a dead letter."""


# A JSON string literal (escapes included), removed before counting brackets: "[" inside a
# string is not nesting.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")


def too_deep(text: bytes, limit: int) -> bool:
    """True when the arrays and objects in `text` nest more than `limit` levels deep."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False  # the usual case: too few brackets to nest that deep, no scan needed
    depth = 0
    for byte in _STRING.sub(b"", text).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in _OPENERS else -1
        if depth > limit:
            return True
    return False


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e400 parses as inf; every later use of it would fail
        raise JSONRejected(f"the number {literal[:40]} does not fit a 64-bit float")
    return value


def _no_constants(name: str) -> Any:
    raise JSONRejected(f"{name} is not JSON")


def loads(body: bytes, max_depth: int) -> Any:
    """Decode `body` (UTF-8 JSON nested at most `max_depth` levels) or raise JSONRejected."""
    if too_deep(body, max_depth):
        raise JSONRejected(f"JSON nested deeper than {max_depth} levels")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONRejected(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constants)
    except JSONRejected:
        raise
    except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise JSONRejected(f"not JSON: {exc}") from None
    except RecursionError:  # the scan should make this unreachable; never let it kill a worker
        raise JSONRejected(f"JSON nested deeper than {max_depth} levels") from None
