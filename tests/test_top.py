"""`orch top`'s pure core: rows, keys and screens from status replies, without a terminal."""

from __future__ import annotations

import time

import pytest

from orchestrator.cli.top import (COLUMNS, HELP, TopState, apply_reply, fit_columns, handle_key,
                                      master_gone, matches, render, select_rows)


def row(name: str, template: str = "consumer", state: str = "running", **kw) -> dict:
    base = {"name": name, "template": template, "state": state, "pid": 100, "uptime": 5.0, "restarts": 0,
            "last_exit": None, "reason": None, "rss": 1 << 20, "cpu": 0.0, "requests": 0,
            "held": False, "notify_status": None}
    return {**base, **kw}


def reply(rows: list[dict], **kw) -> dict:
    return {"name": "fleet", "config": "/srv/workers.toml", "pid": 42, "started": time.time() - 60,
            "applied_at": time.time(), "reloads": 0, "last_reload_error": None, "instances": rows, **kw}


HEADER = 3  # the column titles' line


def text(lines) -> list[str]:
    return ["".join(t for t, _ in line) for line in lines]


def state_with(rows: list[dict], **kw) -> TopState:
    state = TopState(**kw)
    apply_reply(state, reply(rows), time.time())
    return state


def fleet(n: int) -> list[dict]:
    return [row(f"w-{i:05d}", template="a" if i % 2 else "b", cpu=float(i % 7), rss=(i % 11) << 20,
                restarts=i % 5, uptime=float(i % 13), pid=1000 + i) for i in range(n)]


@pytest.mark.parametrize("pattern, name, template, expected", [
    ("template:consumer", "x", "consumer", True),
    ("template:cons*", "x", "consumer", True),
    ("template:producer", "consumer-1", "consumer", False),
    ("consumer-*", "consumer-1", "consumer", True),
    ("*-1", "consumer-2", "consumer", False),
    ("sum", "consumer-2", "consumer", True),       # no glob characters: a substring
    ("consumer-[12]", "consumer-2", "c", True),
    ("consumer-[12]", "consumer-3", "c", False),
])
def test_matches(pattern, name, template, expected):
    assert matches(row(name, template), pattern) is expected


@pytest.mark.parametrize("key, first, reverse_first", [
    ("n", "w-00000", "w-00019"), ("p", "w-00006", "w-00000"), ("m", "w-00010", "w-00000"),
    ("x", "w-00004", "w-00000"), ("t", "w-00012", "w-00000"),
])
def test_sort_keys_and_the_same_key_again_reverses(key, first, reverse_first):
    state = state_with(fleet(20), sort="t" if key == "n" else "n")
    handle_key(state, key, 10)
    assert state.rows[0]["name"] == first and state.cursor == 0
    handle_key(state, key, 10)
    assert state.rows[0]["name"] == reverse_first and state.reverse


def test_command_line_patterns_and_the_filter_combine():
    rows = select_rows(fleet(20), ("template:a",), "w-0001*", "n", False)
    assert [r["name"] for r in rows] == [f"w-000{i}" for i in (11, 13, 15, 17, 19)]


def test_filter_as_you_type_enter_keeps_and_esc_clears():
    state = state_with(fleet(20))
    handle_key(state, "/", 10)
    for key in "0001":
        handle_key(state, key, 10)
    assert len(state.rows) == 11 and state.mode == "filter"  # w-00001 and w-00010..19
    handle_key(state, "backspace", 10)
    assert len(state.rows) == 20  # "000" matches every name
    handle_key(state, "1", 10)
    handle_key(state, "enter", 10)
    assert state.mode == "list" and state.filter == "0001" and len(state.rows) == 11
    assert "filter: 0001 (11 of 20)" in text(render(state, 120, 20))[2]
    handle_key(state, "esc", 10)
    assert state.filter == "" and len(state.rows) == 20


def test_selection_follows_the_instance_when_a_refresh_reorders_rows():
    rows = fleet(10)
    state = state_with(rows)
    handle_key(state, "p", 5)
    handle_key(state, "down", 5)
    chosen = state.selected
    for r in rows:
        r["cpu"] = 100.0 - r["cpu"] if r["name"] != chosen else 50.0
    apply_reply(state, reply(rows), time.time())
    assert state.rows[state.cursor]["name"] == chosen


def test_confirmation_acts_on_the_selected_one_or_every_shown_row_and_anything_else_cancels():
    state = state_with(fleet(6))
    handle_key(state, "/", 5)
    for key in "template:a":
        handle_key(state, key, 5)
    handle_key(state, "enter", 5)
    handle_key(state, "down", 5)
    assert handle_key(state, "r", 5) is None and state.mode == "confirm"
    assert "restart w-00003? y = this one, a = all 3 shown" in text(render(state, 120, 20))[-1]
    assert handle_key(state, "y", 5) == ("act", "restart", ["w-00003"])
    handle_key(state, "s", 5)
    assert handle_key(state, "a", 5) == ("act", "stop", ["w-00001", "w-00003", "w-00005"])
    handle_key(state, "S", 5)
    assert handle_key(state, "n", 5) is None and state.mode == "list"
    assert "start cancelled" in text(render(state, 120, 20))[2]


def test_log_mode_and_quit():
    state = state_with(fleet(3))
    assert handle_key(state, "l", 5) == ("log", "w-00000")
    state.log_lines = ["first", "second \x1b[2J"]
    screen = text(render(state, 60, 12))
    assert screen[3].startswith("log of w-00000") and "second ?[2J" in screen[5]
    handle_key(state, "q", 5)  # q leaves the log first
    assert state.mode == "list"
    assert handle_key(state, "q", 5) == ("quit",)


@pytest.mark.parametrize("width, height", [(160, 40), (80, 24), (50, 12), (30, 8), (1, 5), (250, 3)])
def test_every_screen_fits_the_terminal(width, height):
    state = state_with(fleet(300))
    screen = text(render(state, width, height))
    assert len(screen) == height
    assert all(len(line) <= width for line in screen)
    if height >= 6:
        assert screen[-1] == HELP[:width]
        assert screen[HEADER].startswith("NAME"[:width])


def test_columns_shrink_in_order_and_name_and_state_always_stay():
    rows = [row("consumer-10.0.0.1-queue-urgent-" + str(i), last_exit="SIGKILL") for i in range(5)]
    titles = {w: [c.title for c, _ in fit_columns(32, rows, w)] for w in (200, 100, 80, 40, 20)}
    widths = {w: dict((c.title, n) for c, n in fit_columns(32, rows, w)) for w in (200, 80, 40, 20)}
    assert titles[200] == [c.title for c in COLUMNS] and widths[200]["NAME"] == 32
    assert titles[100] == [c.title for c in COLUMNS if c.title != "STATUS"]  # after NAME shrank to 24
    assert titles[80] == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "RSS", "CPU%"]
    assert widths[80]["NAME"] == 24  # long names shrink to 24 before columns go
    assert titles[40] == ["NAME", "STATE", "PID"] and widths[40]["NAME"] == 24
    assert titles[20] == ["NAME", "STATE"] and widths[20]["NAME"] == 12


def test_the_list_scrolls_to_the_cursor_and_only_visible_rows_are_drawn():
    state = state_with(fleet(5000))
    handle_key(state, "end", 29)
    screen = text(render(state, 120, 34))  # 4 header lines, 29 rows, the help line
    assert screen[-2].startswith("w-04999")
    assert sum(line.startswith("w-") for line in screen) == 29
    handle_key(state, "pgup", 29)
    screen = text(render(state, 120, 34))
    assert state.selected == "w-04970" and any(line.startswith("w-04970") for line in screen)


def test_selected_row_and_states_are_styled():
    state = state_with([row("a", state="backoff"), row("b")])
    lines = render(state, 120, 10)
    assert lines[4] == [(lines[4][0][0], "selected")]
    assert ("running", "state:running") in [(t.strip(), s) for t, s in lines[5]]


def test_fleet_header_counts_and_a_failed_reload():
    state = TopState()
    apply_reply(state, reply([row("a"), row("b", state="backoff", rss=None)],
                             last_reload_error="workers.toml:3: bad"), time.time())
    screen = text(render(state, 200, 10))
    assert screen[0].startswith("orch fleet  master 42  up 1m00s  /srv/workers.toml")
    assert "2 instances: 1 backoff, 1 running  RSS 1.0M" in screen[1] and "LAST RELOAD FAILED" in screen[1]


def test_master_gone_keeps_the_last_picture_and_says_so():
    state = state_with(fleet(4))
    before = text(render(state, 120, 12))
    master_gone(state, "no orch master is running")
    after = text(render(state, 120, 12))
    assert after[2].startswith("master gone: no orch master is running; showing the picture from")
    assert after[3:] == before[3:]


def test_worker_text_cannot_smuggle_terminal_escapes():
    state = state_with([row("evil\x1b]0;x\x07", notify_status="\x1b[2J\x9bcleared\ttab")])
    screen = "\n".join(text(render(state, 200, 8)))
    assert "\x1b" not in screen and "\x07" not in screen and "\x9b" not in screen
    assert "?[2J?cleared tab" in screen


def test_a_long_name_is_cut_visibly():
    state = state_with([row("n" * 100)])
    assert text(render(state, 80, 8))[4].startswith("n" * 23 + "~ ")


def test_the_memory_column_says_what_the_limits_count():
    from orchestrator.cli.top import _memory
    assert _memory({"rss": 50 * 2**20, "memory_measure": "rss"}) == "50.0M"
    assert _memory({"rss": 50 * 2**20, "memory_measure": "pss", "measured": 6 * 2**20}) == "6.0M pss"
    assert _memory({"rss": None}) == "-"


def test_a_user_column_shows_when_some_instance_runs_as_another_user():
    plain = text(render(state_with(fleet(3)), 200, 8))[HEADER]
    assert "USER" not in plain
    rows = [row("a", user="app"), row("b", user="app:www-data"), row("c")] + fleet(40)
    state = state_with(rows)
    screen = text(render(state, 200, 50))
    assert screen[HEADER].split()[:3] == ["NAME", "TEMPLATE", "USER"]
    cells = {line.split()[0]: line.split()[2] for line in screen[HEADER + 1:] if line.strip()}
    assert cells["a"] == "app" and cells["b"] == "app:www-data" and cells["c"] == "-"
    handle_key(state, "end", 5)  # scrolled past every row with a user: the column stays
    assert text(render(state, 200, 10))[HEADER].split()[:3] == ["NAME", "TEMPLATE", "USER"]
    assert "USER" not in text(render(state, 40, 10))[HEADER]  # dropped before PID on a narrow terminal


CELLS = [{"cell": "consumer-qa", "template": "consumer", "now": 3, "desired": 5, "min": 1, "max": 8,
          "backlog": 900, "source_error": None, "readable": True, "pinned": None, "decided_at": 1.0e9,
          "reason": "backlog 900: 5 wanted, above 3 for 2.0s: up to 5"},
         {"cell": "consumer-qb", "template": "consumer", "now": 2, "desired": 2, "min": 0, "max": 4,
          "backlog": None, "source_error": "connection refused", "readable": False, "pinned": 2,
          "decided_at": None, "reason": "pinned at 2 by orch scale"}]


def test_c_shows_each_autoscaled_cell_and_c_again_goes_back():
    state = TopState()
    apply_reply(state, reply(fleet(3), scaling=CELLS), time.time())
    assert "c cells" in HELP
    assert handle_key(state, "c", 5) is None and state.mode == "cells"
    lines = render(state, 120, 12)
    screen = text(lines)
    assert screen[HEADER].split() == ["CELL", "NOW/DESIRED", "MIN-MAX", "BACKLOG", "LAST", "DECISION"]
    qa, qb = screen[HEADER + 1].split(), screen[HEADER + 2]
    assert qa[:4] == ["consumer-qa", "3/5", "1-8", "900"], qa
    assert screen[HEADER + 1].endswith("backlog 900: 5 wanted, above 3 for 2.0s: up to 5"), screen[HEADER + 1]
    assert qb.split()[:4] == ["consumer-qb", "2/2", "0-4", "?"] and "[pinned]" in qb and "connection refused" in qb
    assert lines[HEADER + 2][0][1] == "error"  # an unreadable backlog stands out
    assert screen[-1].startswith("Esc/q/c back to the list")
    assert not any(line.startswith("w-0000") for line in screen)  # the cells replace the instance rows
    apply_reply(state, reply(fleet(3), scaling=[{**CELLS[0], "now": 5, "reason": "steady at 5"}]), time.time())
    assert "5/5" in text(render(state, 120, 12))[HEADER + 1]  # refreshed with every status
    handle_key(state, "c", 5)
    assert state.mode == "list" and text(render(state, 120, 12))[HEADER].startswith("NAME")
    handle_key(state, "c", 5)
    assert handle_key(state, "q", 5) is None and state.mode == "list"  # q leaves the cells first


@pytest.mark.parametrize("width, height", [(160, 40), (50, 12), (20, 6), (1, 5)])
def test_the_cells_view_fits_the_terminal_and_says_when_there_are_none(width, height):
    for cells in (CELLS * 20, []):
        state = TopState(mode="cells")
        apply_reply(state, reply(fleet(2), scaling=cells), time.time())
        screen = text(render(state, width, height))
        assert len(screen) == height and all(len(line) <= width for line in screen)
    state = TopState(mode="cells")
    apply_reply(state, reply([]), time.time())
    assert "no autoscaled cells" in text(render(state, 120, 10))[HEADER + 1]


def test_the_cells_view_follows_tops_patterns_and_filter():
    state = TopState(patterns=("template:consumer", "other-*"), mode="cells")
    apply_reply(state, reply(fleet(2), scaling=CELLS + [{**CELLS[0], "cell": "web-a", "template": "web"}]), time.time())
    assert [line.split()[0] for line in text(render(state, 120, 10))[HEADER + 1:HEADER + 4] if line] == \
        ["consumer-qa", "consumer-qb"]  # web-a is neither template consumer nor other-*
    state.filter = "qb"
    screen = text(render(state, 120, 10))
    assert screen[HEADER + 1].startswith("consumer-qb") and not screen[HEADER + 2]
    state.filter = "nothing"
    assert text(render(state, 120, 10))[HEADER + 1] == "no cell matches"
