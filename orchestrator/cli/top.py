"""`orch top`'s model and rendering (pure): status replies and key presses in, screen lines out.

The curses driver (`top_screen.py`) only fetches, reads keys and paints what `render()` returns,
so everything a user sees or triggers here is testable without a terminal. A screen line is a
list of (text, style) segments; styles are names ("heading", "selected", "state:running", ...)
that the driver maps to terminal attributes.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..units import format_duration, format_size
from .scale_view import cell_summaries
from .top_cells import BACK, cells_view
from .probe_view import probe_summary

Segment = tuple[str, str]
Line = list[Segment]
Row = dict[str, Any]

# key -> (sort name, row key, largest first by default)
SORTS: dict[str, tuple[str, Callable[[Row], Any], bool]] = {
    "n": ("name", lambda r: r["name"], False),
    "p": ("cpu", lambda r: r.get("cpu") or 0.0, True),
    "m": ("rss", lambda r: r.get("rss") or 0, True),
    "x": ("restarts", lambda r: r.get("restarts") or 0, True),
    "t": ("uptime", lambda r: r.get("uptime") or 0.0, True),
}
ACTIONS = {"r": "restart", "s": "stop", "S": "start"}
HELP = ("q quit  \u2191\u2193 select  / filter  r restart  s stop  S start  l log  c cells  "
        "sort: n name  p cpu  m rss  x restarts  t uptime")
HEADER_LINES = 4  # fleet, counts, message, column titles
_CONTROL = {c: "?" for c in [*range(32), *range(127, 160)]}


@dataclass
class Confirm:
    """A pending restart/stop/start, waiting for y (the selected one) or a (every shown row)."""

    action: str
    one: str
    shown: list[str]


@dataclass
class TopState:
    """Everything the view shows; changed only by `apply_reply`, `master_gone` and `handle_key`."""

    patterns: tuple[str, ...] = ()
    sort: str = "n"
    reverse: bool = False
    filter: str = ""
    reply: dict[str, Any] | None = None
    rows: list[Row] = field(default_factory=list)   # filtered and sorted
    cursor: int = 0
    top: int = 0                                     # first visible row
    selected: str | None = None                      # followed across refreshes and re-sorts
    fetched_at: float | None = None
    gone: str | None = None                          # why the master cannot be reached
    mode: str = "list"                               # list | filter | confirm | log | cells
    typed: str = ""                                  # the filter being typed
    confirm: Confirm | None = None
    message: str = ""
    log_name: str | None = None
    log_lines: list[str] = field(default_factory=list)
    name_width: int = 0                              # longest shown name (per refresh, not per key)
    summary: Line = field(default_factory=list)      # the fleet's counts and totals (per refresh)


def clean(text: Any) -> str:
    """Printable text: a worker's STATUS= or a log line must not reach the terminal as escapes."""
    text = str(text)
    return text if text.isprintable() else text.replace("\t", " ").translate(_CONTROL)


def matches(row: Row, pattern: str) -> bool:
    """`template:NAME`, a glob on the name, or (without glob characters) a substring of it."""
    if pattern.startswith("template:"):
        return fnmatch.fnmatchcase(row["template"], pattern[9:])
    if not any(c in pattern for c in "*?["):
        return pattern in row["name"]
    return fnmatch.fnmatchcase(row["name"], pattern)


def select_rows(instances: list[Row], patterns: tuple[str, ...], text: str, sort: str,
                reverse: bool) -> list[Row]:
    """The rows the list shows: command-line patterns (any), then the `/` filter, then sorted."""
    rows = [r for r in instances if not patterns or any(matches(r, p) for p in patterns)]
    if text:
        rows = [r for r in rows if matches(r, text)]
    _, key, largest_first = SORTS[sort]
    if sort == "n":
        rows.sort(key=key, reverse=reverse)
    else:  # one pass; ties in name order whichever way the numbers go
        sign = -1 if largest_first != reverse else 1
        rows.sort(key=lambda r: (sign * key(r), r["name"]))
    return rows


def refilter(state: TopState) -> None:
    """Recompute the shown rows and keep the selection on the same instance if it is still shown."""
    instances = state.reply["instances"] if state.reply else []
    state.rows = select_rows(instances, state.patterns, state.filter, state.sort, state.reverse)
    names = [r["name"] for r in state.rows]
    state.name_width = max(map(len, names), default=0)
    if state.selected in names:
        state.cursor = names.index(state.selected)
    state.cursor = max(0, min(state.cursor, len(names) - 1))
    state.selected = names[state.cursor] if names else None


def apply_reply(state: TopState, reply: dict[str, Any], now: float) -> None:
    """A fresh status reply: the master answers again."""
    state.reply, state.fetched_at, state.gone = reply, now, None
    state.summary = summarize(reply)
    refilter(state)


def master_gone(state: TopState, reason: str) -> None:
    """The status request failed: keep the last picture and say why."""
    state.gone = reason


def handle_key(state: TopState, key: str, page: int) -> tuple[str, Any] | None:
    """Apply one key; returns what the driver must do: ("quit",), ("act", action, names) or
    ("log", name), else None. Keys are characters or "up", "down", "pgup", "pgdn", "home",
    "end", "enter", "esc", "backspace"."""
    if state.mode == "filter":
        return _filter_key(state, key)
    if state.mode == "confirm":
        return _confirm_key(state, key)
    if state.mode in ("log", "cells"):
        if key in ("esc", "q", "enter", state.mode[0]):  # l leaves the log, c the cells
            state.mode, state.log_name = "list", None
        return None
    if key == "q":
        return ("quit",)
    moves = {"up": -1, "k": -1, "down": 1, "j": 1, "pgup": -page, "pgdn": page,
             "home": -len(state.rows), "end": len(state.rows)}
    if key in moves and state.rows:
        state.cursor = max(0, min(state.cursor + moves[key], len(state.rows) - 1))
        state.selected = state.rows[state.cursor]["name"]
    elif key in SORTS:
        state.reverse = not state.reverse if state.sort == key else False
        state.sort, state.cursor, state.selected = key, 0, None  # a new order starts at its top
        refilter(state)
    elif key == "/":
        state.mode, state.typed = "filter", state.filter
    elif key == "esc" and state.filter:
        state.filter = ""
        refilter(state)
    elif key in ACTIONS and state.selected:
        state.mode = "confirm"
        state.confirm = Confirm(ACTIONS[key], state.selected, [r["name"] for r in state.rows])
    elif key == "c":  # the autoscaled cells: replicas, backlog, last decision
        state.mode = "cells"
    elif key == "l" and state.selected:
        state.mode, state.log_name = "log", state.selected
        return ("log", state.selected)
    return None


def _filter_key(state: TopState, key: str) -> None:
    if key == "enter":
        state.mode, state.filter = "list", state.typed.strip()
    elif key == "esc":
        state.mode, state.typed = "list", ""
    elif key == "backspace":
        state.typed = state.typed[:-1]
    elif len(key) == 1 and key.isprintable():
        state.typed += key
    state.filter = state.typed.strip()  # filter as you type
    refilter(state)
    return None


def _confirm_key(state: TopState, key: str) -> tuple[str, Any] | None:
    confirm, state.mode, state.confirm = state.confirm, "list", None
    if confirm is None:
        return None
    if key == "y":
        return ("act", confirm.action, [confirm.one])
    if key == "a" and confirm.shown:
        return ("act", confirm.action, confirm.shown)
    state.message = f"{confirm.action} cancelled"
    return None


# --- rendering -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column: its title, how to show a row, its widest useful width, and its drop order."""

    title: str
    cell: Callable[[Row], str]
    cap: int
    drop: int          # columns with higher numbers go first when the terminal is narrow
    right: bool = False


def _last_exit(row: Row) -> str:
    text = row.get("last_exit") or "-"
    return f"{text} ({row['reason']})" if row.get("reason") else text


def _memory(row: Row) -> str:
    """RSS, or what the memory limits count (memory.measure = "pss" or "uss") with its name."""
    measure = row.get("memory_measure") or "rss"
    if measure != "rss" and row.get("measured"):
        return f"{format_size(row['measured'])} {measure}"
    return format_size(row["rss"]) if row.get("rss") else "-"


COLUMNS = (
    Column("NAME", lambda r: r["name"], 48, 0),
    Column("TEMPLATE", lambda r: r["template"], 20, 6),
    Column("STATE", lambda r: r["state"] + ("*" if r.get("held") else ""), 14, 0),
    Column("PID", lambda r: str(r["pid"] or "-"), 7, 1, True),
    Column("UPTIME", lambda r: format_duration(r["uptime"]) if r.get("uptime") is not None else "-",
           7, 4, True),
    Column("RESTARTS", lambda r: str(r.get("restarts", 0)), 8, 2, True),
    Column("LAST EXIT", _last_exit, 26, 5),
    Column("RSS", lambda r: _memory(r), 12, 3, True),
    Column("CPU%", lambda r: f"{r['cpu']:.1f}" if r.get("cpu") is not None else "-", 6, 3, True),
    Column("REQS", lambda r: str(r.get("requests") or 0), 7, 7, True),
    Column("STATUS", lambda r: r.get("notify_status") or "", 0, 8),
)
# `user =`: after TEMPLATE, and only when some instance runs as another user (as in orch status)
USER = Column("USER", lambda r: r.get("user") or "-", 20, 6)
# health probes: before STATUS, and only when some instance has probes (as in orch status)
PROBES = Column("PROBES", lambda r: probe_summary(r) or "-", 32, 5)
MIN_NAME = 12


def fit_columns(name_width: int, visible: list[Row], width: int,
                users: bool | None = None, probes: bool = False) -> list[tuple[Column, int]]:
    """Columns and widths for this terminal: drop the least useful columns, then shrink NAME;
    STATUS takes what is left. The name width is the longest of every shown row's, so
    scrolling does not make the table jump; other widths come from the visible rows only.
    `users`: show USER (default: when a visible row has a user; render asks every shown row)."""
    def natural(col: Column) -> int:
        if col.title == "NAME":
            longest = name_width
        else:
            longest = max((len(col.cell(r)) for r in visible), default=0) if col.cap else 0
        return max(len(col.title), min(longest, col.cap)) if col.cap else len(col.title)

    if users is None:
        users = any(r.get("user") for r in visible)
    columns = COLUMNS[:2] + (USER,) + COLUMNS[2:] if users else COLUMNS
    if probes:
        columns = columns[:-1] + (PROBES,) + columns[-1:]
    chosen = [(c, natural(c)) for c in columns]

    def excess() -> int:
        return sum(w for _, w in chosen) + 2 * (len(chosen) - 1) - width

    # Shrink long names to 24 first, then drop columns (least useful first), then names to 12,
    # then PID: NAME and STATE always stay.
    for floor, keep in ((24, 2), (MIN_NAME, 1)):
        while excess() > 0:
            if chosen[0][1] > floor:
                chosen[0] = (chosen[0][0], max(floor, chosen[0][1] - excess()))
                continue
            droppable = [cw for cw in chosen if cw[0].drop >= keep]
            if not droppable:
                break
            chosen.remove(max(droppable, key=lambda cw: cw[0].drop))
    if chosen[-1][0].title == "STATUS":
        used = sum(w for _, w in chosen[:-1]) + 2 * (len(chosen) - 1)
        chosen[-1] = (chosen[-1][0], max(len("STATUS"), width - used))
    return chosen


def _fit(text: str, width: int, right: bool = False) -> str:
    text = clean(text)
    if len(text) > width:
        text = text[:max(width - 1, 0)] + "~" if width > 1 else text[:width]
    return text.rjust(width) if right else text.ljust(width)


def _fleet_lines(state: TopState, width: int) -> list[Line]:
    reply = state.reply
    if reply is None:
        return [[("orch top: waiting for the master", "heading")], [("", "")]]
    now = state.fetched_at or time.time()  # as of the picture: frozen when the master is gone
    up = format_duration(now - reply["started"]) if reply.get("started") else "?"
    first = f"orch {reply['name']}  master {reply['pid']}  up {up}  {reply['config']}"
    return [[(_fit(first, width), "heading")], _clip(state.summary, width)]


def summarize(reply: dict[str, Any]) -> Line:
    """The second header line: instances by state, total RSS and CPU, the last reload."""
    counts: dict[str, int] = {}
    rss, cpu = 0, 0.0
    for row in reply["instances"]:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
        rss += row.get("rss") or 0
        cpu += row.get("cpu") or 0.0
    applied = reply.get("applied_at")
    when = time.strftime("%H:%M:%S", time.localtime(applied)) if applied else "never"
    line: Line = [(f"{len(reply['instances'])} instances: " + (", ".join(
        f"{n} {s}" for s, n in sorted(counts.items())) or "none"), "plain"),
        (f"  RSS {format_size(rss)}  CPU {cpu:.1f}%  last reload {when}", "plain")]
    if reply.get("last_reload_error"):
        line.append(("  LAST RELOAD FAILED", "error"))
    line += [(f"  {cell}", "error" if "?" in cell else "plain") for cell in cell_summaries(reply.get("scaling"))]
    return line


def _message_line(state: TopState) -> Line:
    if state.gone is not None:
        when = time.strftime("%H:%M:%S", time.localtime(state.fetched_at)) if state.fetched_at else "-"
        return [(f"master gone: {state.gone}; showing the picture from {when}", "error")]
    total = len(state.reply["instances"]) if state.reply else 0
    sort_name = SORTS[state.sort][0] + (" (reversed)" if state.reverse else "")
    text = f"sort: {sort_name}"
    if state.filter or state.patterns:
        shown = " ".join([*state.patterns, *([state.filter] if state.filter else [])])
        text += f"  filter: {shown} ({len(state.rows)} of {total})"
    if state.message:
        text += f"  | {state.message}"
    return [(text, "plain")]


def _clip(line: Line, width: int) -> Line:
    out: Line = []
    left = width
    for text, style in line:
        if left <= 0:
            break
        out.append((clean(text)[:left], style))
        left -= len(out[-1][0])
    return out


def _bottom_line(state: TopState) -> Line:
    if state.mode == "filter":
        return [("filter (glob, text or template:NAME; Enter keeps, Esc clears): /" + state.typed, "input")]
    if state.mode == "confirm" and state.confirm:
        c = state.confirm
        return [(f"{c.action} {c.one}? y = this one, a = all {len(c.shown)} shown, "
                 "any other key = no", "input")]
    if state.mode in ("log", "cells"):
        return [(BACK[state.mode], "help")]
    return [(HELP, "help")]


def fit_scroll(state: TopState, page: int) -> None:
    """Scroll so that the cursor row is on screen."""
    page = max(page, 1)
    state.top = max(0, min(state.top, len(state.rows) - page))
    if state.cursor < state.top:
        state.top = state.cursor
    elif state.cursor >= state.top + page:
        state.top = state.cursor - page + 1


def render(state: TopState, width: int, height: int) -> list[Line]:
    """The whole screen, `height` lines of at most `width` characters."""
    width = max(width, 1)
    page = max(height - HEADER_LINES - 1, 0)
    lines = _fleet_lines(state, width) + [_clip(_message_line(state), width)]
    if state.mode == "log":
        lines.append([(_fit(f"log of {state.log_name}", width), "heading")])
        body = [[(_fit(text, width), "plain")] for text in state.log_lines[-page:]] if page else []
    elif state.mode == "cells":
        heading, cells = cells_view(state.reply, width, page, state.patterns, state.filter)
        lines.append(_clip(heading, width))
        body = [_clip(line, width) for line in cells]
    else:
        fit_scroll(state, page)
        visible = state.rows[state.top:state.top + page]
        columns = fit_columns(state.name_width, visible, width, any(r.get("user") for r in state.rows),
                              any(r.get("probes") for r in state.rows))
        lines.append([(_fit("  ".join(_fit(c.title, w, c.right) for c, w in columns), width), "heading")])
        body = [_row_line(row, columns, width, state.top + i == state.cursor)
                for i, row in enumerate(visible)]
        if not state.rows:
            body = [[("no instance matches" if state.reply else "", "plain")]][:page]
    lines += body + [[]] * (page - len(body))
    lines.append(_clip(_bottom_line(state), width))
    return lines[:height]


def _row_line(row: Row, columns: list[tuple[Column, int]], width: int, selected: bool) -> Line:
    cells = [_fit(col.cell(row), w, col.right) for col, w in columns]
    if selected:
        return [(_fit("  ".join(cells), width), "selected")]
    line: Line = []
    for (col, _), cell in zip(columns, cells):
        style = f"state:{row['state']}" if col.title == "STATE" else "plain"
        line.append((cell, style))
        line.append(("  ", "plain"))
    return _clip(line[:-1], width)
