"""`python -m bench`: run every scenario for every tool, print one Markdown table."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from . import host
from .report import (RESULTS_MD, from_json, machine_info, render_machine, render_notes, render_table,
                     render_targets, to_json, write_results)
from .scenarios import Options, run
from .tools import TOOLS, tool_class


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark orch, supervisord and circus side by side on the same fleet of sleeps.")
    parser.add_argument("--quick", action="store_true", help="N=100 only, 5 s idle and log windows")
    parser.add_argument("--n", metavar="N[,N...]", help="fleet sizes (default 100,500; --quick: 100)")
    parser.add_argument("--tools", default="orch,supervisord,circus",
                        help="comma-separated, from: orch, supervisord, circus (default: all three)")
    parser.add_argument("--no-floor", action="store_true", help="skip the no-supervisor floor")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each session (default 3)")
    parser.add_argument("--idle-seconds", type=float, help="idle window (default 20; --quick: 5)")
    parser.add_argument("--crash-kills", type=int, default=50,
                        help="SIGKILLs in the crash scenario, spread over the fleet (default 50)")
    parser.add_argument("--budget", type=float, default=560.0,
                        help="seconds after which remaining steps are skipped (default 560)")
    parser.add_argument("--step-cap", type=float, default=120.0,
                        help="seconds one step may wait before it is reported over the cap (default 120)")
    parser.add_argument("--pause-damon", action="store_true",
                        help="turn the host's DAMON memory monitor off for the run, and back on after (root; see bench/host.py)")
    parser.add_argument("--json", metavar="FILE", help="also dump every figure and sample as JSON")
    parser.add_argument("--write-results", action="store_true", help=f"rewrite {RESULTS_MD.name} with the table")
    parser.add_argument("--from-json", metavar="FILE", help="re-render a run saved with --json; run nothing")
    args = parser.parse_args(argv)
    unknown = [t for t in args.tools.split(",") if t not in TOOLS or t == "floor"]
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; choose from orch, supervisord, circus")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def options(args: argparse.Namespace) -> Options:
    sizes = [int(n) for n in args.n.split(",")] if args.n else ([100] if args.quick else [100, 500])
    idle = args.idle_seconds if args.idle_seconds is not None else (5.0 if args.quick else 20.0)
    tools = ([] if args.no_floor else ["floor"]) + [t for t in TOOLS if t in args.tools.split(",")]
    small = max(sizes) if args.n else None  # a tiny --n run scales the orch-only fleets down too
    return Options(sizes=sizes, tools=tools, reps=args.reps, idle_seconds=idle, quiet_cap=min(15.0, 3 * idle),
                   crash_kills=args.crash_kills, py_workers=min(100, small or 100),
                   log_writers=min(50, small or 50), log_seconds=min(idle, 10.0), budget_seconds=args.budget,
                   step_cap=args.step_cap)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: no daemon is left behind


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    opts = options(args)
    if args.from_json:
        results, opts, info = from_json(json.loads(Path(args.from_json).read_text()))
        tools = {name: tool_class(name)() for name in opts.tools}
        table, notes, targets = render_table(results, opts), render_notes(opts, tools), render_targets(results, opts)
        print(f"{render_machine(info)}\n\n{table}\n\n{targets}\n\n{notes}")
        if args.write_results:
            write_results(RESULTS_MD, table, notes, info, f"python -m bench (re-rendered from {args.from_json})",
                          targets)
        return 0
    started = time.monotonic()
    print(f"bench: tools {', '.join(opts.tools)}; N = {', '.join(map(str, opts.sizes))}; "
          f"{opts.reps} rep(s); idle window {opts.idle_seconds:g} s", file=sys.stderr)
    before = host.damon()
    with host.paused_damon() if args.pause_damon else contextlib.nullcontext([]) as paused:
        results = run(opts, lambda line: print(f"  {time.monotonic() - started:5.0f}s  {line}", file=sys.stderr,
                                               flush=True))
    tools = {name: tool_class(name)() for name in opts.tools}
    info = machine_info(tools)
    info["damon"] = f"paused for the run ({before})" if paused else before
    table = render_table(results, opts)
    notes = render_notes(opts, tools)
    targets = render_targets(results, opts) if "orch" in opts.tools else ""
    print(f"{render_machine(info)}\n\n{table}\n\n{targets}\n\n{notes}")
    print(f"bench: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(results, opts, info), indent=1))
    if args.write_results:
        command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results(RESULTS_MD, table, notes, info, command.strip(), targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
