"""`[[hooks]]`: commands the master runs when events happen (pure apart from parsing Jinja).

Each hook names the event kinds it runs on, an argv whose items are Jinja templates of the
event's facts, how long to stay quiet for the same instance and kind once it ran
(`throttle`), and how long it may run (`timeout`). The event kinds are declared here, once:
the journal (supervise/journal.py), `orch events` and the docs read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fields import ValueType, type_name
from .locate import Problems

# Every kind of event the master records, with what it means.
EVENT_KINDS: dict[str, str] = {
    "started": "an instance's process is running (pid)",
    "exited": "an instance's process ended on its own or failed to start (exit, code or signal)",
    "stopped": "an instance was stopped on purpose (exit, reason)",
    "crashloop": "an instance failed fast so often that its restart delay reached backoff.max",
    "limit": "a limit acted on an instance (limit, value)",
    "probe_failed": "a health probe failed (probe, error)",
    "reload": "a reload was applied (origin, and how many instances it starts, stops, restarts)",
    "reload_failed": "a reload was refused (origin, error: the located config error)",
    "scaled": "a template's replica count changed (from, to, reason)",
    "spawner_replaced": "the spawner died and a new one took over (old_pid, pid)",
    "state": "any other state change (old, new, reason)",
}
DEFAULT_THROTTLE = 300.0
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class HookDecl:
    """One validated `[[hooks]]` table."""

    on: tuple[str, ...]
    command: tuple[str, ...]  # each item a Jinja template of the event's facts
    throttle: float = DEFAULT_THROTTLE
    timeout: float = DEFAULT_TIMEOUT
    index: int = field(default=0, compare=False)  # its place in the file (messages); a reload that
    # adds a hook before it keeps its throttle windows


def _kinds(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise ValueError(f"expected a non-empty array of event kinds, got {type_name(v)}")
    unknown = [x for x in v if x not in EVENT_KINDS]
    if unknown:
        raise ValueError(f"unknown event kind {unknown[0]!r}; one of: {', '.join(EVENT_KINDS)}")
    return tuple(dict.fromkeys(v))


def _argv(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v) or not v[0].strip():
        raise ValueError("expected a non-empty array of strings (an argv: no shell runs it)")
    return tuple(v)


EVENT_LIST = ValueType("array of event kinds", _kinds, {
    "type": "array", "minItems": 1, "items": {"enum": list(EVENT_KINDS)}})
ARGV = ValueType("array of strings", _argv, {
    "type": "array", "minItems": 1, "items": {"type": "string"}})


def parse_hooks(value: object, keys: dict[str, Any], problems: Problems) -> tuple[HookDecl, ...]:
    """Every valid `[[hooks]]` table (`keys`: the parsers of hooks.*.KEY); problems for the rest."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        problems.add("hooks", "expected [[hooks]] tables, each with on = [...] and command = [...]")
        return ()
    found = []
    for index, table in enumerate(value):
        hook = _hook(index, table, keys, problems)
        if hook is not None:
            found.append(hook)
    return tuple(found)


def _hook(index: int, table: dict, keys: dict[str, Any], problems: Problems) -> HookDecl | None:
    prefix = f"hooks.{index}"
    before = len(problems.items)
    clean = problems.parsed(prefix + ".", table, keys)
    for needed in ("on", "command"):
        if needed not in table:
            problems.add(prefix, f"missing {needed!r}")
    for i, item in enumerate(clean.get("command", ())):
        error = template_error(item)
        if error:
            problems.add(f"{prefix}.command", f"item {i}: {error}")
    if len(problems.items) > before:
        return None
    return HookDecl(clean["on"], clean["command"], float(clean.get("throttle", DEFAULT_THROTTLE)),
                    float(clean.get("timeout", DEFAULT_TIMEOUT)), index)


def template_error(text: str) -> str | None:
    """Why `text` is no valid Jinja template (None if it is): found at load, not at the event."""
    if "{" not in text:
        return None
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import SandboxedEnvironment
    try:
        SandboxedEnvironment().parse(text)
    except TemplateSyntaxError as exc:
        return f"Jinja syntax error: {exc.message}"
    return None
