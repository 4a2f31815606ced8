"""Replicas that follow a queue's backlog: the `replicas = { min, max, backlog }` range, the
`scale` pace and the `backlog` source of a plain-command template, parsed and validated
(pure). The source's strings are Jinja text here; expand/backlog.py renders them per matrix
cell, and supervise/scaler.py reads them and scales each cell on its own."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..units import parse_duration
from .fields import ValueType, int_at_least, type_name

MAX_REPLICAS = 100_000
SOURCES = ("redis", "beanstalkd", "command")


@dataclass(frozen=True)
class Replicas:
    """An autoscaled replica count: from `min` to `max`, about `per` waiting messages each
    (`per` None: the template's `backlog.per` gives it)."""

    min: int
    max: int
    per: int | None = None


@dataclass(frozen=True)
class Scale:
    """How fast a cell follows its backlog: up once demand held `up_after`, down once lower
    demand held `down_after`, never more than `step` replicas per decision."""

    up_after: float = 2.0
    down_after: float = 60.0
    step: int = 2


@dataclass(frozen=True)
class BacklogDecl:
    """Where a plain-command template's backlog is read: a Redis list or stream, a beanstalkd
    tube, or a command printing an integer; strings not yet rendered."""

    kind: str  # redis | redis-stream | beanstalkd | command
    url: str = ""
    key: str = ""  # the list, stream or tube
    group: str = ""  # redis-stream: the consumer group
    argv: tuple[str, ...] = ()
    per: int | None = None
    timeout: float = 5.0  # command: killed after this long


def replica_count(replicas: int | Replicas) -> int:
    """How many replicas of each cell the expansion renders: the fixed count, or the max."""
    return replicas.max if isinstance(replicas, Replicas) else replicas


def _whole(where: str, v: object, low: int, high: int = MAX_REPLICAS) -> int:
    """A whole number in [low, high] (fields.int_at_least); `where` is the key below the one
    the error names."""
    try:
        return int_at_least(low, high).parse(v)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}" if where else str(exc)) from None


def _only(where: str, table: dict, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r} (one of {', '.join(allowed)})")


def parse_replicas(v: object) -> int | Replicas:
    """`2`, or `{ min = 1, max = 8, backlog = 200 }` (min may be 0)."""
    if not isinstance(v, dict):
        return _whole("", v, 1)
    _only("replicas", v, ("min", "max", "backlog"))
    if "max" not in v:
        raise ValueError("replicas: an autoscaled count needs max, like { min = 1, max = 8, backlog = 200 }")
    low = _whole("replicas.min", v.get("min", 1), 0)
    high = _whole("replicas.max", v["max"], 1)
    if low > high:
        raise ValueError(f"replicas.min ({low}) must not exceed replicas.max ({high})")
    per = _whole("replicas.backlog", v["backlog"], 1, 2**31 - 1) if "backlog" in v else None
    return Replicas(low, high, per)


def _seconds(where: str, v: object, low: float, high: float) -> float:
    try:
        seconds = parse_duration(v)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not low <= seconds <= high:
        raise ValueError(f"{where}: must be from {low:g}s to {high:g}s, got {v!r}")
    return seconds


def parse_scale(v: object) -> Scale:
    """`{ up_after = "2s", down_after = "60s", step = 2 }`, each optional."""
    if not isinstance(v, dict):
        raise ValueError(f"expected a table like {{ up_after = \"2s\", down_after = \"60s\", step = 2 }}, "
                         f"got {type_name(v)}")
    _only("scale", v, ("up_after", "down_after", "step"))
    base = Scale()
    return Scale(_seconds("scale.up_after", v.get("up_after", base.up_after), 0, 3600),
                 _seconds("scale.down_after", v.get("down_after", base.down_after), 0, 86400),
                 _whole("scale.step", v.get("step", base.step), 1))


def _text(where: str, v: object) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{where}: expected a non-empty string")
    return v


def parse_backlog(v: object) -> BacklogDecl:
    """`{ redis = URL, list = KEY | stream = KEY, group = G, per = N }`, `{ beanstalkd = URL,
    tube = T, per = N }` or `{ command = [argv], per = N, timeout = "5s" }`."""
    if not isinstance(v, dict):
        raise ValueError(f"expected a table like {{ redis = \"redis://127.0.0.1:6379/0\", list = \"jobs\", "
                         f"per = 100 }}, got {type_name(v)}")
    kinds = [k for k in SOURCES if k in v]
    if len(kinds) != 1:
        raise ValueError(f"backlog: give exactly one of {', '.join(SOURCES)}")
    per = _whole("backlog.per", v["per"], 1, 2**31 - 1) if "per" in v else None
    kind = kinds[0]
    if kind == "command":
        _only("backlog", v, ("command", "per", "timeout"))
        argv = v["command"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv) \
                or not argv[0].strip():
            raise ValueError("backlog.command: expected an array of strings like [\"app\", \"backlog\"] (no shell)")
        return BacklogDecl("command", argv=tuple(argv), per=per,
                           timeout=_seconds("backlog.timeout", v.get("timeout", 5.0), 0.01, 60))
    if kind == "beanstalkd":
        _only("backlog", v, ("beanstalkd", "tube", "per"))
        return BacklogDecl("beanstalkd", _text("backlog.beanstalkd", v["beanstalkd"]),
                           _text("backlog.tube", v.get("tube", "default")), per=per)
    _only("backlog", v, ("redis", "list", "stream", "group", "per"))
    if ("list" in v) == ("stream" in v):
        raise ValueError("backlog: a redis source names either list or stream")
    if "stream" in v:
        return BacklogDecl("redis-stream", _text("backlog.redis", v["redis"]), _text("backlog.stream", v["stream"]),
                           _text("backlog.group", v.get("group", "orch")), per=per)
    if "group" in v:
        raise ValueError("backlog.group: only a stream has a consumer group")
    return BacklogDecl("redis", _text("backlog.redis", v["redis"]), _text("backlog.list", v["list"]), per=per)


def wanted(backlog: int, low: int, high: int, per: int) -> int:
    """clamp(ceil(backlog / per), low, high): the replicas a backlog asks for (pure)."""
    return max(low, min(high, math.ceil(max(backlog, 0) / per)))


_DURATION_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "number", "minimum": 0}]}
REPLICAS = ValueType("integer from 1 to 100,000, or { min, max, backlog }", parse_replicas, {"anyOf": [
    {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS},
    {"type": "object", "additionalProperties": False, "required": ["max"],
     "properties": {"min": {"type": "integer", "minimum": 0, "maximum": MAX_REPLICAS},
                    "max": {"type": "integer", "minimum": 1, "maximum": MAX_REPLICAS},
                    "backlog": {"type": "integer", "minimum": 1}}}]})
SCALE = ValueType("table of scaling pace", parse_scale, {
    "type": "object", "additionalProperties": False,
    "properties": {"up_after": _DURATION_SCHEMA, "down_after": _DURATION_SCHEMA,
                   "step": {"type": "integer", "minimum": 1}}})
BACKLOG = ValueType("table of backlog source", parse_backlog, {
    "type": "object", "additionalProperties": False,
    "properties": {"redis": {"type": "string"}, "list": {"type": "string"}, "stream": {"type": "string"},
                   "group": {"type": "string"}, "beanstalkd": {"type": "string"}, "tube": {"type": "string"},
                   "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                   "per": {"type": "integer", "minimum": 1}, "timeout": _DURATION_SCHEMA}})


# The consumers whose kwargs name their own queue: an autoscaled template running one needs no
# `backlog` table (expand/backlog.py reads url and queue, stream and group, or tube).
CONSUMERS = {
    "orchestrator.queues.redis:QueueConsumer": "redis",
    "orchestrator.queues.redis_stream:StreamConsumer": "redis-stream",
    "orchestrator.queues.beanstalkd:QueueConsumer": "beanstalkd",
}


def scaling_problems(clean: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for a template whose replicas, backlog and target do not fit together."""
    replicas, backlog = clean.get("replicas"), clean.get("backlog")
    if not isinstance(replicas, Replicas):
        return [("backlog", "a backlog source is read only for replicas = { min, max, backlog }")] \
            if backlog is not None else []
    if backlog is None and clean.get("target") not in CONSUMERS:
        return [("backlog", "an autoscaled template that is not one of orch's queue consumers names "
                 "its backlog source: { redis = URL, list = KEY, per = N }, { beanstalkd = URL, tube = T, "
                 "per = N } or { command = [argv], per = N }")]
    per = [p for p in (replicas.per, backlog.per if backlog is not None else None) if p is not None]
    if len(per) != 1:
        return [("replicas", "give the messages per replica once: replicas.backlog (or backlog.per)")]
    return []


@dataclass(frozen=True)
class Autoscale:
    """What the master needs to scale one matrix cell, rendered (on each of its ProcessSpecs):
    the cell's name (its replica 0's default name), bounds, pace and where its backlog is read."""

    cell: str
    min: int
    max: int
    per: int
    scale: Scale
    source: BacklogDecl  # strings rendered

    @property
    def source_key(self) -> tuple[str, str, str, str, tuple[str, ...]]:
        """Cells that read the same queue share one reading."""
        s = self.source
        return (s.kind, s.url, s.key, s.group, s.argv)

    def describe(self) -> str:
        """The source as status shows it (a URL's password left out)."""
        s = self.source
        if s.kind == "command":
            return " ".join(s.argv)
        url = s.url
        if "@" in url:
            scheme, _, rest = url.partition("://")
            url = f"{scheme}://***@{rest.rpartition('@')[2]}"
        return f"{s.kind} {url} {s.key}" + (f" ({s.group})" if s.group else "")
