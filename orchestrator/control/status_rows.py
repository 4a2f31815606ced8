"""`orch status --json`'s text, a row per line, written straight from the instances.

At 5,000 instances, building each row as a dict (`Instance.status`) and encoding it with
json took about 20 us a row, as much as reading /proc for the usage; writing the same text
with one f-string a row takes half of that. The text is exactly what `json` would make of
`Instance.status()` (tests/test_status_text.py compares them for every kind of row): a
change to one is a change to the other."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _string
from typing import Any, Iterable

from ..supervise.instance import Instance, _user, sample_usage
from ..supervise.states import State
from ..supervise.supervisor import Supervisor

_encode = json.JSONEncoder().encode  # the C encoder; a row per line greps well (indent= is the
# pure-Python encoder, twice as slow at 5,000 rows)


def status_text(supervisor: Supervisor, names: Iterable[str] | None, cells: list[dict[str, Any]]) -> str:
    """The instances (all, or `names`) with fresh usage, then the autoscaled cells as rows
    of kind "cell": a JSON array, one row per line."""
    chosen = list(supervisor.instances.values()) if names is None else [supervisor.instances[n] for n in names]
    sample_usage(chosen, supervisor.tree_usage, supervisor.loop.time())
    rows = [row_text(inst) for inst in chosen] + [_encode({"kind": "cell", **cell}) for cell in cells]
    return "[\n" + ",\n".join(rows) + "\n]" if rows else "[]"


def _value(value: Any) -> str:
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is int:
        return int.__repr__(value)
    return _encode(value)  # bool, float, dict, list: as json writes them


def row_text(inst: Instance) -> str:
    """`json.dumps(inst.status())`, without the dict."""
    spec, pid, state = inst.spec, inst.pid, inst.state
    measure = spec.policy.memory_measure
    waiting = state is State.WAITING
    reason = f"waiting for {inst.waiting or 'its dependencies'}" if waiting else inst.last_reason
    return (f'{{"name": {_string(spec.name)}, "template": {_string(spec.template)}, "state": {_string(state.value)}, '
            f'"pid": {_value(pid)}, "uptime": {_value(round(inst.uptime(), 3)) if pid else "null"}, '
            f'"restarts": {_value(inst.restarts)}, "last_exit": {_value(inst.last_exit)}, "reason": {_value(reason)}, '
            f'"waiting": {_value(inst.waiting) if waiting else "null"}, '
            f'"rss": {_value(inst.rss) if pid else "null"}, "memory_measure": {_value(measure)}, '
            f'"measured": {_value(inst.measured) if pid and measure != "rss" else "null"}, '
            f'"cpu": {_value(round(inst.cpu_percent, 1)) if pid else "null"}, '
            f'"processes": {_value(inst.processes) if pid else "null"}, "requests": {_value(inst.requests)}, '
            f'"ready": {_value(inst.ready)}, '
            f'"probes": {_value(inst.probes.status()) if inst.probes is not None else "null"}, '
            f'"held": {_value(inst.held)}, "notify_status": {_value(inst.notify_status)}, '
            f'"limit_kills": {_encode(inst.limit_kills) if inst.limit_kills else "{}"}, '
            f'"hash": {_string(spec.process_hash)}, "user": {_value(_user(spec))}}}')
