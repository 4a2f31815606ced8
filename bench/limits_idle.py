"""`python -m bench.limits_idle`: what memory limits on every instance cost an idle orch, with
the kernel reporting (`cgroup = "auto"`) against the sampler (`cgroup = "off"`), in one run.

N sleeps, each with `memory = { soft = "200MiB", hard = "300MiB" }` and check_interval 1s.
Per mode: the time until all N run, the CPU of the master and its helpers over `--seconds`
of idling (% of one core), how many instance cgroups existed, and how many were left after
a graceful stop (must be 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import fleet as fleets
from .idle import Rows, by_size, interleaved, median, sleeping, spread, stop
from .procfs import Scanner, cpu_percent, quiet
from .report import write_section
from .scenarios import SETTLE
from .tools.orch import Orch

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


class LimitedOrch(Orch):
    """orch with a memory limit on every instance and the given `cgroup` mode."""

    memory_limits = True

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def render_config(self, fleet: fleets.Fleet) -> str:
        return super().render_config(fleet).replace("[orchestrator]\n", f'[orchestrator]\ncgroup = "{self.mode}"\n', 1)


def instance_cgroups(run_root: list[str]) -> int:
    return sum(1 for root in run_root if os.path.isdir(root) for name in os.listdir(root) if name.startswith("i-"))


def session(mode: str, n: int, seconds: float) -> dict[str, Any]:
    tool = LimitedOrch(mode)
    with sleeping(tool, f"orchbench-limits-{mode}-", n) as (fleet, start):
        time.sleep(SETTLE)
        helpers = Scanner(fleet.tag, tool.pid).snapshot().helpers()
        settled = quiet(helpers, 180)
        roots = tool.cgroup_dirs()
        made = instance_cgroups(roots)
        cpu, rss = cpu_percent(helpers, seconds)
        stop(tool)
        left = sum(1 for root in roots if os.path.exists(root))
        return {"start": start, "cpu": cpu, "rss": rss / 2**20, "cgroups": made, "left": left, "settled": settled}


def render(rows: Rows, args: argparse.Namespace) -> str:
    out = ["## Memory limits on every instance, idle: kernel events against sampling", "",
           f"`python -m bench.limits_idle --n {args.n} --seconds {args.seconds:g} --reps {args.reps}`: N sleeps, "
           'each with `memory = { soft = "200MiB", hard = "300MiB" }`, check_interval 1s; CPU of the master '
           f"and its helpers while idle over {args.seconds:g} s (median of {args.reps}, min-max).", "",
           "| N | cgroup | idle CPU % of a core | start s | quiet after s | RSS MiB | instance cgroups "
           "| cgroups left after stop |",
           "|---|---|---|---|---|---|---|---|"]
    for mode, n, runs in by_size(rows):
        out.append(f"| {n:,} | {mode} | {spread(runs, 'cpu', 3)} | {median(runs, 'start'):.2f} | "
                   f"{median(runs, 'settled'):.0f} | {median(runs, 'rss'):.0f} | "
                   f"{runs[0]['cgroups']:,} | {max(r['left'] for r in runs)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits_idle", description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000", help="fleet sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    rows = interleaved(args.n, args.reps, ("auto", "off"), "cgroup",
                       lambda mode, n: session(str(mode), n, args.seconds))
    table = render(rows, args)
    print(table)
    if args.write_results:
        write_section(RESULTS_MD, "limits-idle", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
