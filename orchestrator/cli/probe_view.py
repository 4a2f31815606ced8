"""Health probes as the views show them (pure: status rows in, text out): one compact cell for
`orch status` and `orch top`, and a block of lines for `orch inspect`."""

from __future__ import annotations

import time
from typing import Any

from ..units import format_duration

ROLES = ("startup", "readiness", "liveness")


def probe_summary(inst: dict[str, Any]) -> str:
    """"ready", or "not ready" with the failing probe's last words ("not ready, readiness:
    HTTP 503 from /"); a liveness probe alone says "ok" or its failure. "" without probes."""
    probes = inst.get("probes")
    if not probes:
        return ""
    failing = [f"{role}: {row['last']}" for role, row in probes.items()
               if row.get("active") and row.get("last") not in (None, "ok")]
    if not {"startup", "readiness"} & set(probes):  # liveness alone says nothing of readiness
        return ", ".join(failing) or "ok"
    return ", ".join(["ready" if inst.get("ready") else "not ready"] + failing)


def _state(row: dict[str, Any]) -> str:
    if not row.get("active"):
        return "done" if row.get("passing") else "not yet"  # a startup probe that passed; the others before it
    if not row.get("checks"):
        return "pending"
    return "passing" if row.get("passing") or row.get("last") == "ok" else f"failing {row.get('failures', 0)}x"


def probe_lines(probes: dict[str, Any] | None, now: float | None = None) -> list[str]:
    """One line per probe: role, kind and target, state, checks, last result, last failure and
    when it was."""
    if not probes:
        return []
    now = time.time() if now is None else now
    lines = ["probes:"]
    for role in ROLES:
        row = probes.get(role)
        if row is None:
            continue
        line = (f"  {role:<9} {row['kind']} {row['target']}: {_state(row)}, {row.get('checks', 0)} checks "
                f"({row.get('failed', 0)} failed), last {row.get('last') or '-'}")
        if row.get("last_failure"):
            at = row.get("last_failure_at")
            when = (f" at {time.strftime('%H:%M:%S', time.localtime(at))} "
                    f"({format_duration(max(0.0, now - at))} ago)") if at else ""
            line += f"; last failure: {row['last_failure']}{when}"
        lines.append(line)
    return lines
