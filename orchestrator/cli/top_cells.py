"""`orch top`'s cells view (key `c`, pure): a line per autoscaled cell with its replicas now /
desired, min-max, backlog and the last scaling decision with its reason, the same table as
`orch scale`, refreshed with every status reply."""

from __future__ import annotations

import fnmatch
from typing import Any

from .scale_view import render_cells

Line = list[tuple[str, str]]
BACK = {"log": "Esc/q/l back to the list (the log refreshes every second)",  # top's views that only show
        "cells": "Esc/q/c back to the list (the cells refresh with every status)"}


def shown(row: dict[str, Any], pattern: str) -> bool:
    """As top's rows: `template:NAME`, a glob on the cell's name, or text found in it."""
    if pattern.startswith("template:"):
        return fnmatch.fnmatchcase(row["template"], pattern[9:])
    if not any(c in pattern for c in "*?["):
        return pattern in row["cell"]
    return fnmatch.fnmatchcase(row["cell"], pattern)


def cells_view(reply: dict[str, Any] | None, width: int, page: int, patterns: tuple[str, ...] = (),
               text: str = "") -> tuple[Line, list[Line]]:
    """The heading line and up to `page` body lines, each cut to `width`, of the cells top's
    patterns (any) and `/` filter choose; a cell whose backlog cannot be read is an error."""
    rows = [r for r in (reply or {}).get("scaling") or []
            if (not patterns or any(shown(r, p) for p in patterns)) and (not text or shown(r, text))]
    table = render_cells(rows)
    if not table:
        none = "no cell matches" if (reply or {}).get("scaling") else \
            "no autoscaled cells (replicas = { min, max, backlog } in a template)"
        return [("CELLS", "heading")], [[(none[:width] if reply else "", "plain")]][:page]
    head, lines = table[0], table[1:]
    body: list[Line] = []
    for row, text in zip(rows, lines):
        style = "error" if row.get("source_error") else "plain"
        body.append([(_cut(text, width), style)])
    return [(_cut(head, width), "heading")], body[:page]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "~"
