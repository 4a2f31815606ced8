"""The pure scaling decision (supervise/autoscale.py) and the config it reads
(config/scaling.py): tables for the rules, properties for the bounds, histories on a fake clock."""

from __future__ import annotations

import types

import pytest
from hypothesis import given, strategies as st

from orchestrator.config.scaling import (BacklogDecl, Replicas, Scale, parse_backlog, parse_replicas,
                                         parse_scale, wanted)
from orchestrator.supervise.autoscale import Bounds, CellState, decide, start_state

PACE = Scale(up_after=2.0, down_after=60.0, step=2)
B = Bounds(1, 8, 200)


@pytest.mark.parametrize("backlog, low, high, per, expected", [
    (0, 1, 8, 200, 1), (1, 1, 8, 200, 1), (200, 1, 8, 200, 1), (201, 1, 8, 200, 2),
    (5000, 1, 8, 200, 8), (0, 0, 8, 200, 0), (1, 0, 8, 200, 1), (-5, 0, 3, 10, 0), (30, 2, 3, 10, 3),
])
def test_wanted_is_ceil_of_backlog_over_per_clamped(backlog, low, high, per, expected):
    assert wanted(backlog, low, high, per) == expected


def replay(history: list[tuple[float, int | None]], state: CellState, bounds: Bounds = B,
           pace: Scale = PACE) -> list[int]:
    counts = []
    for now, backlog in history:
        state, decision = decide(state, backlog, now, bounds, pace)
        counts.append(decision.count)
    return counts


@pytest.mark.parametrize("name, history, start, expected", [
    ("a burst waits up_after, then climbs step a second",
     [(0, 5000), (1, 5000), (2, 5000), (3, 5000), (4, 5000), (5, 5000), (6, 5000)], 1, [1, 1, 3, 5, 7, 8, 8]),
    ("two decisions in the same second take one step (a reading right after the wait's timer)",
     [(0, 5000), (2, 5000), (2.02, 5000), (2.5, 5000), (3, 5000)], 1, [1, 3, 3, 3, 5]),
    ("a blip shorter than up_after changes nothing",
     [(0, 5000), (1, 5000), (1.5, 0), (2.5, 5000), (3.5, 5000)], 1, [1, 1, 1, 1, 1]),
    ("idle goes down only after down_after, by step",
     [(0, 0), (30, 0), (59, 0), (60, 0), (61, 0), (62, 0), (63, 0)], 8, [8, 8, 8, 6, 4, 2, 1]),
    ("demand back during the down wait restarts the wait",
     [(0, 0), (50, 1600), (51, 0), (100, 0), (111, 0)], 8, [8, 8, 8, 8, 6]),
    ("down goes no lower than what is still wanted",
     [(0, 500), (60, 500), (61, 500), (62, 500)], 8, [8, 6, 4, 3]),
    ("an unreadable backlog keeps the count and restarts the wait",
     [(0, 5000), (1, None), (2, 5000), (3, 5000), (4, 5000)], 1, [1, 1, 1, 1, 3]),
])
def test_histories(name, history, start, expected):
    assert replay(history, CellState(start)) == expected, name


def test_min_zero_starts_one_within_up_after_of_the_first_message():
    bounds = Bounds(0, 4, 100)
    state, decision = decide(start_state(bounds), 1, 10.0, bounds, PACE)
    assert decision.count == 0 and decision.wake_at == 12.0  # the master decides again then
    state, decision = decide(state, 1, decision.wake_at, bounds, PACE)
    assert decision.count == 1 and decision.changed


def test_changed_bounds_apply_at_once_and_pins_hold():
    state, decision = decide(CellState(6), 5000, 0.0, Bounds(1, 4, 200), PACE)
    assert (decision.count, decision.changed) == (4, True) and "bounds" in decision.reason
    state, decision = decide(CellState(1), 0, 0.0, Bounds(2, 4, 200), PACE)
    assert decision.count == 2
    state, decision = decide(CellState(1), 5000, 0.0, B, PACE, pinned=3)
    assert decision.count == 3 and "orch scale" in decision.reason
    assert decide(CellState(1), 5000, 0.0, B, PACE, pinned=30)[1].count == 8  # never past max


@given(st.lists(st.tuples(st.floats(0, 5), st.one_of(st.none(), st.integers(0, 10_000))), max_size=60),
       st.integers(0, 5), st.integers(0, 10), st.integers(1, 500), st.integers(1, 4),
       st.floats(0, 10), st.floats(0, 10))
def test_properties(steps, low, extra, per, step, up_after, down_after):
    """Whatever the readings: the count stays within bounds, moves at most `step` per decision
    (after the first, which may clamp into new bounds), never moves against the demand, and
    never moves on an unreadable backlog."""
    bounds, pace = Bounds(low, low + extra, per), Scale(up_after, down_after, step)
    state, now = start_state(bounds), 0.0
    for gap, backlog in steps:
        now += gap
        before = state.count
        state, decision = decide(state, backlog, now, bounds, pace)
        assert bounds.min <= decision.count <= bounds.max and state.count == decision.count
        assert abs(decision.count - before) <= step
        if backlog is None:
            assert decision.count == before
        else:
            want = wanted(backlog, bounds.min, bounds.max, per)
            assert min(before, want) <= decision.count <= max(before, want)


@given(st.integers(1, 10_000), st.integers(1, 8), st.floats(0, 5))
def test_a_steady_burst_reaches_what_it_wants(backlog, step, up_after):
    bounds = Bounds(0, 20, 50)
    state, now = start_state(bounds), 0.0
    for _ in range(40):
        state, decision = decide(state, backlog, now, bounds, Scale(up_after, 60.0, step))
        now += 1.0
    assert state.count == wanted(backlog, 0, 20, 50)


@pytest.mark.parametrize("value, expected", [
    (3, 3), ({"max": 8}, Replicas(1, 8, None)), ({"min": 0, "max": 2, "backlog": 5}, Replicas(0, 2, 5)),
])
def test_replicas_parse(value, expected):
    assert parse_replicas(value) == expected


@pytest.mark.parametrize("value, message", [
    (0, "at least 1"), ({"min": 3, "max": 2}, "must not exceed"), ({"min": 1}, "needs max"),
    ({"max": 2, "per": 3}, "unknown key 'per'"), ({"max": True}, "whole number"), ({"max": 2, "backlog": 0}, "at least 1"),
])
def test_replicas_refused(value, message):
    with pytest.raises(ValueError, match=message):
        parse_replicas(value)


def test_scale_and_backlog_parse():
    assert parse_scale({}) == Scale(2.0, 60.0, 2)
    assert parse_scale({"up_after": "500ms", "step": 4}) == Scale(0.5, 60.0, 4)
    assert parse_backlog({"redis": "redis://h/0", "list": "jobs:{{ queue }}", "per": 100}) == \
        BacklogDecl("redis", "redis://h/0", "jobs:{{ queue }}", per=100)
    assert parse_backlog({"redis": "redis://h/0", "stream": "s", "group": "g"}).kind == "redis-stream"
    assert parse_backlog({"beanstalkd": "beanstalk://h:11300", "tube": "t"}).key == "t"
    assert parse_backlog({"command": ["app", "n"], "per": 2}).argv == ("app", "n")
    for bad, message in [({"redis": "r", "list": "a", "stream": "b"}, "either list or stream"),
                         ({"redis": "r", "list": "a", "command": ["x"]}, "exactly one"),
                         ({"command": "x"}, "array of strings"), ({"redis": "r", "list": "a", "group": "g"}, "stream"),
                         ({"up_after": "1s"}, "exactly one")]:
        with pytest.raises(ValueError, match=message):
            parse_backlog(bad)
    with pytest.raises(ValueError, match="step"):
        parse_scale({"step": 0})


def test_the_cells_table_and_top_header():
    from orchestrator.cli.scale_view import cell_summaries, render_cells
    from orchestrator.cli.top import summarize
    rows = [{"cell": "consumer-qa", "template": "consumer", "now": 3, "desired": 5, "min": 1, "max": 8,
             "backlog": 900, "source_error": None, "pinned": None, "decided_at": 0.0,
             "reason": "backlog 900: 5 wanted, above 3 for 2.0s: up to 5"},
            {"cell": "consumer-qb", "template": "consumer", "now": 2, "desired": 2, "min": 1, "max": 8,
             "backlog": None, "source_error": "connection refused", "pinned": 2, "decided_at": None, "reason": ""}]
    lines = render_cells(rows)
    assert lines[0].split() == ["CELL", "NOW/DESIRED", "MIN-MAX", "BACKLOG", "LAST", "DECISION"]
    assert "3/5" in lines[1] and "1-8" in lines[1] and "up to 5" in lines[1]
    assert "?" in lines[2] and "unreadable (connection refused)" in lines[2] and "[pinned]" in lines[2]
    assert render_cells([]) == []
    assert cell_summaries(rows) == ["consumer-qa 3/5 [1-8] backlog 900 (up to 5)",
                                    "consumer-qb 2/2 [1-8] backlog ? () pinned"]
    header = "".join(text for text, _ in summarize({"instances": [], "scaling": rows}))
    assert "consumer-qa 3/5 [1-8] backlog 900" in header


@pytest.mark.parametrize("table, where, words", [
    ('command = "app"\nreplicas = { min = 3, max = 2 }', "workers.w.replicas", "must not exceed"),
    ('command = "app"\nreplicas = { max = 4, backlog = 10 }', "workers.w.backlog", "names its backlog source"),
    ('command = "app"\nreplicas = 2\nbacklog = { command = ["n"], per = 1 }', "workers.w.backlog", "only for replicas"),
    ('target = "orchestrator.queues.redis:QueueConsumer"\nreplicas = { max = 4 }', "workers.w.replicas",
     "messages per replica once"),
    ('command = "app"\nreplicas = { max = 4 }\nbacklog = { redis = "redis://h/0", list = "j", per = 5 }\n'
     'scale = { step = 0 }', "workers.w.scale", "step"),
])
def test_bad_scaling_config_is_a_located_error(tmp_path, table, where, words):
    from conftest import orch
    config = tmp_path / "workers.toml"
    config.write_text("[workers.w]\n" + table + "\n")
    out = orch("check", "-c", str(config))
    assert out.returncode == 2 and where in out.stderr and words in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


class _Supervisor:
    """What the Scaler asks of the supervisor: what runs, and plans to apply."""

    def __init__(self) -> None:
        self.instances: dict = {}
        self.plans: list = []

    def running_view(self) -> dict:
        return dict.fromkeys(self.instances)

    def apply(self, plan) -> None:
        self.plans.append(plan)
        for spec in plan.start:
            self.instances[spec.name] = types.SimpleNamespace(pid=1, then=None)
        for name in plan.stop:
            self.instances.pop(name)

    def flush(self) -> None:
        pass


def _specs(tmp_path, replicas: str) -> list:
    from orchestrator.expand.render import check
    config = tmp_path / "workers.toml"
    config.write_text(f"""
[workers.first]
command = "a"
[workers.w]
command = "app {{{{ q }}}}"
matrix = {{ q = ["x", "y"] }}
replicas = {replicas}
backlog = {{ command = ["n"], per = 10 }}
[workers.last]
command = "z"
""")
    return check(config)[1]


def test_the_scaler_keeps_each_cells_first_count_in_file_order(tmp_path):
    from orchestrator.loop import EventLoop
    from orchestrator.supervise.scaler import Scaler
    loop, sup = EventLoop(), _Supervisor()
    scaler = Scaler(sup, loop)
    try:
        kept = scaler.desired(_specs(tmp_path, "{ min = 1, max = 4 }"))
        assert [s.name for s in kept] == ["first", "w-x", "w-y", "last"]
        rows = scaler.pin("w-y", 3)
        assert rows[0]["desired"] == 3 and [p.start for p in sup.plans][0] and "w-y-2" in sup.instances
        assert [s.name for s in scaler.preview(_specs(tmp_path, "{ min = 1, max = 4 }"))] == \
            ["first", "w-x", "w-y", "w-y-1", "w-y-2", "last"]
        kept = scaler.desired(_specs(tmp_path, "{ min = 2, max = 2 }"))  # a save: bounds apply at once
        assert [s.name for s in kept] == ["first", "w-x", "w-x-1", "w-y", "w-y-1", "last"]
        assert scaler.cells["w-x"].decision.reason == "bounds are now 2-2"
        with pytest.raises(ValueError, match="replicas.max"):
            scaler.pin("w", 3)
        with pytest.raises(ValueError, match="no autoscaled template or cell"):
            scaler.pin("first", 1)
    finally:
        scaler.close()
        loop.close()


def test_each_scaling_step_is_one_log_line_and_one_journal_record(tmp_path, caplog):
    """Pins, bounds changed by a save and backlog decisions all go through one place: a line
    and a `scaled` record per step, and none for a reload that changes nothing."""
    from orchestrator.loop import EventLoop
    from orchestrator.supervise.scaler import Scaler
    loop, sup, records = EventLoop(), _Supervisor(), []
    scaler = Scaler(sup, loop, lambda **facts: records.append(facts))
    caplog.set_level("INFO", logger="orch")
    try:
        scaler.desired(_specs(tmp_path, "{ min = 1, max = 4 }"))
        scaler.pin("w-y", 3)
        scaler.desired(_specs(tmp_path, "{ min = 2, max = 4 }"))  # w-x 1 -> 2; w-y stays pinned at 3
        scaler.desired(_specs(tmp_path, "{ min = 2, max = 4 }"))  # the same again: no step
        scaler.pin("w-y", None)
        scaler._decide(scaler.cells["w-x"], 35)  # wants 4 but waits up_after first: no step yet
        loop.run_once(0)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scale ")]
        assert [(f["cell"], f["before"], f["after"]) for f in records] == [("w-y", 1, 3), ("w-x", 1, 2)]
        assert lines == [f"scale {f['cell']}: {f['before']} -> {f['after']} ({f['reason']})" for f in records]
    finally:
        scaler.close()
        loop.close()
