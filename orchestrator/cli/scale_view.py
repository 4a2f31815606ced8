"""`orch scale`: pin an autoscaled template's (or one cell's) replicas, or let them follow the
backlog again; and the cells' table that `orch scale`, `orch status` and `orch queues` print
(pure: rows in, text out)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE = 0, 2


def render_cells(rows: list[dict[str, Any]] | None) -> list[str]:
    """One line per autoscaled cell: replicas now/desired, min-max, backlog, the last decision."""
    if not rows:
        return []
    table = [("CELL", "NOW/DESIRED", "MIN-MAX", "BACKLOG", "LAST DECISION")]
    for r in rows:
        backlog = "?" if r.get("source_error") else ("-" if r.get("backlog") is None else str(r["backlog"]))
        if r.get("source_error"):
            reason = f"backlog unreadable ({r['source_error']}): count kept"
        else:
            reason = r.get("reason") or "-"
        if r.get("pinned") is not None:
            reason = f"[pinned] {reason}"
        when = time.strftime("%H:%M:%S", time.localtime(r["decided_at"])) if r.get("decided_at") else ""
        table.append((r["cell"], f"{r['now']}/{r['desired']}", f"{r['min']}-{r['max']}", backlog,
                      f"{when} {reason}".strip()))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]


def cell_summaries(rows: list[dict[str, Any]] | None) -> list[str]:
    """One short text per autoscaled cell, for `orch top`'s header: now/desired, bounds,
    backlog and the last decision's outcome ("up to 5", "steady", "count kept")."""
    out = []
    for r in rows or []:
        backlog = "?" if r.get("source_error") else r.get("backlog")
        outcome = (r.get("reason") or "").rsplit(": ", 1)[-1]
        pin = " pinned" if r.get("pinned") is not None else ""
        out.append(f"{r['cell']} {r['now']}/{r['desired']} [{r['min']}-{r['max']}] backlog {backlog} ({outcome}){pin}")
    return out


def cmd_scale(args: argparse.Namespace, path: Path) -> int:
    from ..control.client import ControlError
    from .link import ask
    if args.target is None and not args.auto:
        rows = ask(args, path, "scale")["cells"]
    else:
        if args.target is None:
            raise ControlError("scale --auto needs a TEMPLATE or cell", EXIT_USAGE)
        if args.auto == (args.count is not None):
            raise ControlError("scale: give either a count (to pin) or --auto (to follow the backlog again)", EXIT_USAGE)
        if args.count is not None and args.count < 0:
            raise ControlError("scale: the count must be 0 or more", EXIT_USAGE)
        rows = ask(args, path, "scale", target=args.target, count=args.count, auto=args.auto)["cells"]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("\n".join(render_cells(rows)) or "no autoscaled cells")
    return EXIT_OK
