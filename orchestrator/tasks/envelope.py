"""The task envelope: the JSON object a producer puts on the queue for one call, and the one
place that decides whether bytes taken from a queue are a task the worker may run.

Anyone who can write to the queue can write an envelope, so a worker validates every field
before it runs anything, and a body that fails is dead-lettered on its first attempt with the
reason. The bounds (the producer checks the same ones in `put()` and `task()`):

- the body: UTF-8 JSON, an object, nested at most MAX_DEPTH levels, no NaN/Infinity and no
  number a float cannot hold (1e400);
- `id`: 1-200 printable characters (it names the result key); `task`: 1-1000;
- `kwargs`: an object;
- `max_attempts`: a whole number 1..1000 (1 when absent);
- `timeout`: absent/null, or seconds in [0.001, 7 days];
- `result_ttl`: seconds in [1, 30 days] (one day when absent);
- other keys (`put_at`) are informational and ignored.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..queues.safe_json import JSONRejected, loads

DEFAULT_TTL = 86400.0                  # results are kept one day unless the queue says otherwise
MAX_DEPTH = 100                        # levels of JSON nesting, the envelope object included
MAX_ATTEMPTS = (1, 1000)               # backoff caps at retry_max_delay: 1000 tries is ~16 h
TIMEOUT = (0.001, 7 * 86400.0)         # below 1 ms setitimer rounds to "no timer"
RESULT_TTL = (1.0, 30 * 86400.0)       # Redis refuses PX 0 and negative; a month is plenty
MAX_ID, MAX_TASK = 200, 1000           # characters


class BadEnvelope(ValueError):
    """Bytes that are not a task this worker may run; the message is the dead letter's reason."""


@dataclass(frozen=True)
class Envelope:
    """One queued call: job id, task name, JSON kwargs and the limits it travels with."""

    id: str
    task: str
    kwargs: dict[str, Any]
    max_attempts: int
    timeout: float | None
    result_ttl: float

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "task": self.task, "kwargs": self.kwargs,
                           "max_attempts": self.max_attempts, "timeout": self.timeout,
                           "result_ttl": self.result_ttl, "put_at": round(time.time(), 3)},
                          separators=(",", ":")).encode()

    @property
    def ttl_ms(self) -> int:
        """result_ttl in whole milliseconds, as Redis' PX wants it (>= 1000 by the bounds)."""
        return int(self.result_ttl * 1000)


def new_id() -> str:
    """A fresh job id (random, so producers on different hosts never collide)."""
    return uuid.uuid4().hex


def parse_envelope(body: bytes) -> Envelope:
    """The envelope in `body`, every field checked; BadEnvelope (with the reason) otherwise."""
    try:
        data = loads(body, MAX_DEPTH)
    except JSONRejected as exc:
        raise BadEnvelope(str(exc)) from None
    if not isinstance(data, dict):
        raise BadEnvelope(f"a task envelope is a JSON object, not {_kind(data)}")
    kwargs = data.get("kwargs")
    if not isinstance(kwargs, dict):
        raise BadEnvelope(f"'kwargs' must be an object, not {_kind(kwargs)}")
    return Envelope(_text(data, "id", MAX_ID), _text(data, "task", MAX_TASK), kwargs,
                    check_attempts(data.get("max_attempts", 1), BadEnvelope),
                    check_seconds("timeout", data.get("timeout"), TIMEOUT, BadEnvelope, optional=True),
                    check_seconds("result_ttl", data.get("result_ttl", DEFAULT_TTL), RESULT_TTL,
                                  BadEnvelope))


def check_attempts(value: Any, error: type[ValueError] = ValueError) -> int:
    """`max_attempts` as an int in MAX_ATTEMPTS, or `error` naming the bound."""
    low, high = MAX_ATTEMPTS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"'max_attempts' must be a whole number from {low} to {high}, not {_show(value)}")
    return value


def check_seconds(key: str, value: Any, bounds: tuple[float, float],
                  error: type[ValueError] = ValueError, optional: bool = False) -> Any:
    """`value` as float seconds within `bounds` (None passes when `optional`), or `error`."""
    if value is None and optional:
        return None
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise error(f"'{key}' must be seconds from {low:.15g} to {high:.15g}"
                    f"{' or null' if optional else ''}, not {_show(value)}")
    return float(value)


def _text(data: dict[str, Any], key: str, longest: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not 1 <= len(value) <= longest or not value.isprintable():
        # printable: no control characters or lone surrogates, which Redis keys and log lines
        # (the id names the result key) could not carry
        raise BadEnvelope(f"'{key}' must be 1-{longest} printable characters, not {_show(value)}")
    return value


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    """A value for an error message, never longer than a line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def job_id_of(body: bytes) -> str | None:
    """The job id inside a queued body when it has a usable one, even if other fields are
    bad (so a dead result can tell the waiting producer why); None otherwise. Never raises."""
    try:
        data = loads(body, MAX_DEPTH)
        return _text(data, "id", MAX_ID) if isinstance(data, dict) else None
    except ValueError:
        return None


def result_ttl_of(body: bytes) -> float:
    """The body's result_ttl when it is valid, else DEFAULT_TTL. Never raises."""
    try:
        return parse_envelope(body).result_ttl
    except BadEnvelope:
        return DEFAULT_TTL
