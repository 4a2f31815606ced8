"""The `probes` table of a template: startup, readiness and liveness checks, parsed and
validated (pure). Targets are Jinja text here; `resolve` turns a rendered target into the
`Probe` an instance is checked with (expand/probes.py renders, supervise/probing.py runs).
An `exec` probe is an argv (no shell), run through the spawner as the instance would run.
A `notify` probe waits for the instance's own sd_notify words on the notify socket:
`notify = "ready"` (or `true`) passes once READY=1 arrived from the current process,
`notify = "watchdog"` passes while WATCHDOG=1 arrives at least once every `period`.

A probe target must be an IP address (or `localhost`): a name would need a DNS lookup, and
the master's loop never waits on one.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ..units import parse_duration
from .fields import ValueType, type_name

ROLES = ("startup", "readiness", "liveness")
KINDS = ("http", "tcp", "exec", "notify")
NOTIFY = ("ready", "watchdog")  # what a notify probe waits for: READY=1, or WATCHDOG=1 every period
DEFAULTS: dict[str, Any] = {"period": 10.0, "timeout": 1.0, "failures": 3, "successes": 1}
_OPTIONS = ("period", "timeout", "failures", "successes", "status")


@dataclass(frozen=True)
class ProbeDecl:
    """One probe as written: its role, kind, target (not yet rendered) and its timings."""

    role: str
    kind: str
    target: str | tuple[str, ...]  # exec: the argv; notify: "ready" or "watchdog"
    period: float = 10.0
    timeout: float = 1.0
    failures: int = 3
    successes: int = 1
    status: int | None = None  # http: the one status that passes (default: any 200-399)


@dataclass(frozen=True)
class Probe:
    """One probe of one instance, its target rendered and resolved to an address."""

    role: str
    kind: str
    host: str
    port: int
    path: str  # http: the request target ("/health?x=1"); tcp: ""
    period: float
    timeout: float
    failures: int
    successes: int
    status: int | None = None
    argv: tuple[str, ...] = ()  # exec: the command, rendered
    message: str = ""  # notify: "ready" or "watchdog"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def shown(self) -> str:
        """The target as status shows it: the URL's address and path, the command, or the
        notify message awaited."""
        if self.kind == "notify":
            return "READY=1" if self.message == "ready" else f"WATCHDOG=1 every {self.period:g}s"
        return " ".join(self.argv) if self.kind == "exec" else self.address + self.path


def _count(role: str, key: str, v: object, high: int = 1000) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= high:
        raise ValueError(f"probes.{role}.{key}: expected a whole number from 1 to {high}, got {v!r}")
    return v


def _seconds(role: str, key: str, v: object) -> float:
    try:
        seconds = parse_duration(v)
    except ValueError as exc:
        raise ValueError(f"probes.{role}.{key}: {exc}") from None
    if not 0.01 <= seconds <= 3600:
        raise ValueError(f"probes.{role}.{key}: must be from 10ms to 1h, got {v!r}")
    return seconds


def _one(role: str, table: object) -> ProbeDecl:
    if not isinstance(table, dict):
        raise ValueError(f"probes.{role}: expected a table like {{ tcp = \"127.0.0.1:8000\" }}, "
                         f"got {type_name(table)}")
    kinds = [k for k in KINDS if k in table]
    if len(kinds) != 1:
        raise ValueError(f"probes.{role}: give exactly one of {', '.join(KINDS)}")
    for key in table:
        if key not in KINDS and key not in _OPTIONS:
            raise ValueError(f"probes.{role}: unknown key {key!r} (one of {', '.join(KINDS + _OPTIONS)})")
    kind, target = kinds[0], table[kinds[0]]
    if kind == "notify":
        target = _notify(role, target, table)
    elif kind == "exec":
        if not isinstance(target, list) or not target or not all(isinstance(a, str) for a in target) \
                or not target[0].strip():
            raise ValueError(f"probes.{role}.exec: expected a command as an array of strings like "
                             "[\"app\", \"healthcheck\"] (no shell)")
        target = tuple(target)
    elif not isinstance(target, str) or not target.strip():
        raise ValueError(f"probes.{role}.{kind}: expected a non-empty string")
    status = table.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599):
        raise ValueError(f"probes.{role}.status: expected an HTTP status from 100 to 599, got {status!r}")
    if status is not None and kind != "http":
        raise ValueError(f"probes.{role}.status: only an http probe has a status")
    decl = ProbeDecl(role, kind, target,
                     _seconds(role, "period", table.get("period", DEFAULTS["period"])),
                     _seconds(role, "timeout", table.get("timeout", DEFAULTS["timeout"])),
                     _count(role, "failures", table.get("failures", DEFAULTS["failures"])),
                     _count(role, "successes", table.get("successes", DEFAULTS["successes"])), status)
    if isinstance(target, str) and "{" not in target:  # a literal target is checked now,
        resolve(decl, target)  # a templated one once rendered
    return decl


def _notify(role: str, target: object, table: dict[str, Any]) -> str:
    """"ready" or "watchdog" for `notify = true | "ready" | "watchdog"`, checked for its role."""
    message = "ready" if target is True else target
    if message not in NOTIFY:
        raise ValueError(f"probes.{role}.notify: expected true, \"ready\" (READY=1) or \"watchdog\" "
                         f"(WATCHDOG=1 every period), got {target!r}")
    if role == "liveness" and message == "ready":
        raise ValueError("probes.liveness.notify: READY=1 comes once, so it cannot tell a live process "
                         "from a stuck one; use notify = \"watchdog\" (WATCHDOG=1 every period)")
    if "timeout" in table:
        raise ValueError(f"probes.{role}.timeout: a notify probe has no timeout: its message must "
                         "arrive within period")
    return str(message)


def parse_probes(v: object) -> tuple[ProbeDecl, ...]:
    """`{ startup = {...}, readiness = {...}, liveness = {...} }` -> the probes in role order."""
    if not isinstance(v, dict):
        raise ValueError(f"expected a table of probes (startup, readiness, liveness), got {type_name(v)}")
    for role in v:
        if role not in ROLES:
            raise ValueError(f"unknown probe {role!r} (one of {', '.join(ROLES)})")
    return tuple(_one(role, v[role]) for role in ROLES if role in v)


def _host(role: str, text: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if host == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"probes.{role}: {text!r} is not an IP address (or localhost): the master "
                         "does no DNS lookups from its loop") from None
    return host


def resolve(decl: ProbeDecl, target: str | tuple[str, ...]) -> Probe:
    """The probe with its rendered `target` parsed: "HOST:PORT" for tcp, an http:// URL for
    http, the argv for exec; ValueError with a message naming the probe otherwise."""
    role, path = decl.role, ""
    if decl.kind == "notify":
        return Probe(role, "notify", "", 0, "", decl.period, decl.timeout, decl.failures, decl.successes,
                     message=str(target))
    if decl.kind == "exec":
        return Probe(role, "exec", "", 0, "", decl.period, decl.timeout, decl.failures, decl.successes,
                     argv=tuple(target))
    assert isinstance(target, str)
    if decl.kind == "http":
        url = urllib.parse.urlsplit(target.strip())
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"probes.{role}.http: expected a URL like \"http://127.0.0.1:8000/health\", "
                             f"got {target!r}")
        try:
            port = url.port or 80
        except ValueError:
            raise ValueError(f"probes.{role}.http: bad port in {target!r}") from None
        host = _host(role, url.hostname)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    else:
        text, sep, port_text = target.strip().rpartition(":")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"probes.{role}.tcp: expected HOST:PORT like \"127.0.0.1:8000\", got {target!r}")
        host, port = _host(role, text), int(port_text)
    return Probe(role, decl.kind, host, port, path, decl.period, decl.timeout, decl.failures,
                 decl.successes, decl.status)


_PROBE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {"http": {"type": "string"}, "tcp": {"type": "string"},
                   "exec": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                   "notify": {"enum": [True, "ready", "watchdog"]},
                   "period": {}, "timeout": {}, "failures": {"type": "integer", "minimum": 1},
                   "successes": {"type": "integer", "minimum": 1},
                   "status": {"type": "integer", "minimum": 100, "maximum": 599}}}
PROBES = ValueType("table of probes", parse_probes, {
    "type": "object", "additionalProperties": False,
    "properties": {role: _PROBE_SCHEMA for role in ROLES}})
