"""The order the suite's tests are handed to pytest-xdist workers in.

`--dist worksteal` cuts the collected list into one contiguous chunk per worker; each
worker runs its chunk from the front, and an idle worker steals the back half of the
busiest one. A 60 s test that happens to sit at the back of a chunk therefore starts in
the last minute and becomes the suite's tail (seen: 6 min 22 s of which the last 50 s
was one test). So the longest tests go to the fronts of the chunks, dealt like a
greedy bin-packing by their known cost, then the other `slow` tests, then the rest.

`COSTS` are seconds measured under `-n 4` on 2 cores (`--durations=80`); a test missing
here is only ordered by its `slow` marker, so a stale entry costs time, never a result.
The order is a pure function of the collected names, the same in every worker (xdist
refuses to run when the workers' collections differ)."""

from __future__ import annotations

from typing import Any, Sequence

COSTS = {  # test function name -> seconds under -n 4
    "test_twenty_upgrades_keep_the_masters_fds_and_memory_flat": 61,
    "test_bench_produces_every_figure": 35,  # each of its two halves
    "test_nothing_lost_under_random_sigkills": 23,
    "test_bench_sockets_runs_every_setup_without_errors": 18,
    "test_every_result_stored_exactly_once_while_workers_are_sigkilled": 18,
    "test_a_notify_flood_from_processes_that_are_no_instances_leaves_the_master_small": 17,
    "test_sigkills_while_scaling_up_and_down_lose_nothing": 12,
    "test_upgrade_under_wrk_keeps_every_child_and_every_line": 12,
    # two upgrades each (estimated: 27 s each alone at load 65, 10-12 s at load 30)
    "test_an_upgrade_across_protocols_keeps_the_old_spawner_until_its_last_child_exits": 10,
    "test_a_sigkilled_master_with_children_on_three_spawners_leaves_nothing": 10,
    "test_fd_counts_of_master_and_helpers_stay_flat_under_a_sigkill_storm": 12,
    "test_a_burst_scales_up_within_up_after_and_idle_back_to_min": 11,
    "test_supervisord_runs_stops_and_starts_the_whole_fleet": 11,
    "test_stop_start_restart_wait_and_no_wait_returns_at_once": 10,
    "test_supervisord_and_honcho_run_every_shipped_config": 8,
    "test_kill_mode_mixed_lets_celery_finish_the_task_in_flight": 10,
    "test_probes_idle_measures_both_modes_and_the_floor": 10,
    "test_thirty_random_saves_converge_and_keep_untouched_pids": 10,
    "test_a_stop_in_progress_a_held_instance_and_a_backoff_carry_over": 10,
    "test_redis_killed_and_restarted_mid_run": 9,
    "test_a_real_browser_sees_the_fleet_live_and_restarts_an_instance": 9,
}
SLOW_DEFAULT = 4.0  # seconds assumed for a `slow` test not in COSTS
FAST_DEFAULT = 0.3


def cost(name: str, slow: bool) -> float:
    """The expected seconds of a test by its node name (parameters stripped)."""
    return COSTS.get(name.split("[", 1)[0], SLOW_DEFAULT if slow else FAST_DEFAULT)


def deal(items: Sequence[Any], costs: Sequence[float], workers: int) -> list[Any]:
    """`items` reordered so that each of `workers` equal contiguous chunks (as worksteal
    cuts them) starts with its share of the costly ones, longest first, each to the chunk
    with the least cost so far; the cheap tests then fill the chunks in their collected
    order, so a module's cheap tests stay together (module-scoped fixtures start once)."""
    if workers <= 1 or len(items) <= workers:
        return list(items)
    sizes = [len(items) // workers + (1 if k < len(items) % workers else 0) for k in range(workers)]
    chunks: list[list[int]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    costly = sorted((i for i in range(len(items)) if costs[i] > FAST_DEFAULT), key=lambda i: (-costs[i], i))
    for i in costly:
        k = min((c for c in range(workers) if len(chunks[c]) < sizes[c]), key=lambda c: (loads[c], c))
        chunks[k].append(i)
        loads[k] += costs[i]
    placed = set(costly)
    cheap = iter(i for i in range(len(items)) if i not in placed)
    for k in range(workers):
        chunks[k].extend(next(cheap) for _ in range(sizes[k] - len(chunks[k])))
    return [items[i] for chunk in chunks for i in chunk]
