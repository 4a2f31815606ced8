"""Prometheus series of the autoscaled cells (supervise/scaler.py's status rows), appended
to the metrics text (pure): replicas asked for, running, bounds, the backlog, and whether
the backlog could be read."""

from __future__ import annotations

from typing import Any, Callable

SERIES: tuple[tuple[str, str, Callable[[dict[str, Any]], float | None]], ...] = (
    ("orch_replicas_desired", "replicas an autoscaled cell asks for now", lambda r: r["desired"]),
    ("orch_replicas_running", "replicas of an autoscaled cell with a running process", lambda r: r["now"]),
    ("orch_replicas_min", "an autoscaled cell's replicas.min", lambda r: r["min"]),
    ("orch_replicas_max", "an autoscaled cell's replicas.max", lambda r: r["max"]),
    ("orch_backlog", "messages waiting in an autoscaled cell's queue, as last read", lambda r: r["backlog"]),
    ("orch_backlog_readable", "1 when the last reading of the cell's backlog succeeded",
     lambda r: 0 if r["source_error"] else 1),
    ("orch_replicas_pinned", "1 while orch scale pins the cell's count", lambda r: 0 if r["pinned"] is None else 1),
)


def render_scaling(rows: list[dict[str, Any]]) -> str:
    """The series for these cells, or "" when none is autoscaled."""
    if not rows:
        return ""
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    lines = []
    for name, text, value in SERIES:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
        for row in rows:
            got = value(row)
            if got is not None:
                lines.append(f'{name}{{cell="{esc(row["cell"])}",template="{esc(row["template"])}"}} {got}')
    return "\n".join(lines) + "\n"
