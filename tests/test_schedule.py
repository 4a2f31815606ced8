"""tests/schedule.py: the longest tests lead every xdist chunk (pure, table-tested)."""

from __future__ import annotations

from schedule import FAST_DEFAULT, cost, deal


def chunks(order: list[str], workers: int) -> list[list[str]]:
    size, extra = divmod(len(order), workers)
    out, start = [], 0
    for k in range(workers):
        end = start + size + (1 if k < extra else 0)
        out.append(order[start:end])
        start = end
    return out


def test_the_longest_tests_lead_distinct_chunks_and_nothing_is_lost_or_repeated():
    names = [f"t{i}" for i in range(20)]
    costs = [FAST_DEFAULT] * 20
    costs[19], costs[18], costs[5], costs[0] = 60, 50, 20, 10
    order = deal(names, costs, 4)
    assert sorted(order) == sorted(names)
    fronts = [chunk[0] for chunk in chunks(order, 4)]
    assert fronts == ["t19", "t18", "t5", "t0"]


def test_cheap_tests_keep_their_collected_order():
    names = [f"t{i}" for i in range(12)]
    costs = [FAST_DEFAULT] * 12
    costs[7] = 30
    order = deal(names, costs, 3)
    assert order[0] == "t7"
    assert [n for n in order if n != "t7"] == [n for n in names if n != "t7"]


def test_one_worker_or_few_items_change_nothing():
    assert deal(["a", "b", "c"], [1, 9, 5], 1) == ["a", "b", "c"]
    assert deal(["a", "b"], [1, 9], 4) == ["a", "b"]


def test_costs_come_from_the_table_or_the_slow_marker():
    assert cost("test_twenty_upgrades_keep_the_masters_fds_and_memory_flat", True) > 30
    assert cost("test_nothing_lost_under_random_sigkills[plain]", True) > 10
    assert cost("test_unknown", True) > cost("test_unknown", False) == FAST_DEFAULT
