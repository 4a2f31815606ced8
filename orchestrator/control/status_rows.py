"""`orch status --json`'s text, a row per line, written straight from the instances.

At 5,000 instances, building each row as a dict (`Instance.status`) and encoding it with
json took about 20 us a row, as much as reading /proc for the usage; writing the same text
with one f-string a row takes half of that. The text is exactly what `json` would make of
`Instance.status()` (tests/test_status_text.py compares them for every kind of row): a
change to one is a change to the other."""

from __future__ import annotations

import json
import math
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
    if not rows:
        return "[]"
    text = ",\n".join(rows)
    return f"[\n{text}\n]"  # one copy of megabytes at 5,000 rows, where a + b + c made two


def _value(value: Any) -> str:
    """JSON of one value, as json writes it; the usual kinds without the encoder's set-up (a
    float through `_encode` cost more than the rest of its row)."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is int:
        return int.__repr__(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return _encode(value)  # NaN and infinities, dicts, lists


def row_text(inst: Instance) -> str:
    """`json.dumps(inst.status())`, without the dict. Counters are ints, flags bools, uptime
    and CPU finite floats (as Instance keeps them), written with the repr json uses; the
    optional strings and the rest go through `_value`."""
    spec, pid, state = inst.spec, inst.pid, inst.state
    measure = spec.policy.memory_measure
    waiting = state is State.WAITING
    reason = f"waiting for {inst.waiting or 'its dependencies'}" if waiting else inst.last_reason
    if pid:
        live = (f'"pid": {pid}, "uptime": {round(inst.uptime(), 3)!r}, "restarts": {inst.restarts}, '
                f'"last_exit": {_value(inst.last_exit)}, "reason": {_value(reason)}, '
                f'"waiting": {_value(inst.waiting) if waiting else "null"}, "rss": {inst.rss}, '
                f'"memory_measure": {_string(measure)}, "measured": {inst.measured if measure != "rss" else "null"}, '
                f'"cpu": {round(inst.cpu_percent, 1)!r}, "processes": {inst.processes}')
    else:
        live = (f'"pid": null, "uptime": null, "restarts": {inst.restarts}, '
                f'"last_exit": {_value(inst.last_exit)}, "reason": {_value(reason)}, '
                f'"waiting": {_value(inst.waiting) if waiting else "null"}, "rss": null, '
                f'"memory_measure": {_string(measure)}, "measured": null, "cpu": null, "processes": null')
    return (f'{{"name": {_string(spec.name)}, "template": {_string(spec.template)}, "state": {_string(state.value)}, '
            f'{live}, "requests": {inst.requests}, "ready": {"true" if inst.ready else "false"}, '
            f'"probes": {_value(inst.probes.status()) if inst.probes is not None else "null"}, '
            f'"held": {"true" if inst.held else "false"}, "notify_status": {_value(inst.notify_status)}, '
            f'"limit_kills": {_encode(inst.limit_kills) if inst.limit_kills else "{}"}, '
            f'"hash": {_string(spec.process_hash)}, "user": {_value(_user(spec))}}}')
