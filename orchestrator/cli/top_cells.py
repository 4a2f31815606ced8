"""`orch top`'s cells view (key `c`, pure): a line per autoscaled cell with its replicas now /
desired, min-max, backlog and the last scaling decision with its reason, the same table as
`orch scale`, refreshed with every status reply."""

from __future__ import annotations

from typing import Any

from .scale_view import render_cells

Line = list[tuple[str, str]]
BACK = {"log": "Esc/q/l back to the list (the log refreshes every second)",  # top's views that only show
        "cells": "Esc/q/c back to the list (the cells refresh with every status)"}


def cells_view(reply: dict[str, Any] | None, width: int, page: int) -> tuple[Line, list[Line]]:
    """The heading line and up to `page` body lines, each cut to `width`; a cell whose
    backlog cannot be read is styled as an error."""
    rows = (reply or {}).get("scaling") or []
    table = render_cells(rows)
    if not table:
        text = "no autoscaled cells (replicas = { min, max, backlog } in a template)" if reply else ""
        return [("CELLS", "heading")], [[(text[:width], "plain")]][:page]
    head, lines = table[0], table[1:]
    body: list[Line] = []
    for row, text in zip(rows, lines):
        style = "error" if row.get("source_error") else "plain"
        body.append([(_cut(text, width), style)])
    return [(_cut(head, width), "heading")], body[:page]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "~"
