"""`python -m bench.logs`: children's output to log files, orch against supervisord in one run.

`--writers` children (default 50) each write numbered 101-byte lines to stdout at
`--rate` bytes a second (default 1 MB/s), in 10 ms bursts. Per tool: the CPU of the daemon
and its helpers over `--seconds`, the bytes that reached the files, and, after a graceful
stop, every log file read back: each line must be whole and each child's numbers must run
without a gap across its rotated files (`--max-size`, default 4 MiB for both tools, so
rotation happens during the window). Only a child's very last line may be cut: it was
being written when the stop came.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import fleet as fleets
from .procfs import Scanner, cpu_percent
from .report import write_section
from .scenarios import SETTLE, launch
from .tools import tool_class
from .tools.base import Tool
from .tools.orch import Orch

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
LINE = 101  # bytes, newline included
WRITER = '''\
"""logwriter.py TOKEN BYTES_PER_SECOND: numbered LINE-byte lines to stdout at that rate."""
import os, sys, time
token, rate = sys.argv[1], int(sys.argv[2])
tick, seq = 0.01, 0
per_tick = max(1, int(rate * tick) // %d)
pad = "x" * (%d - len(token) - 13)
deadline = time.monotonic()
while True:
    os.write(1, "".join("%%s %%010d %%s\\n" %% (token, seq + i, pad) for i in range(per_tick)).encode())
    seq += per_tick
    deadline += tick
    pause = deadline - time.monotonic()
    if pause > 0:
        time.sleep(pause)
''' % (LINE, LINE)
LINE_RE = re.compile(rb"^(\S+) (\d{10}) x+$")


def configure(tool: Tool, fleet: fleets.Fleet, max_size: int) -> None:
    """The tool's usual config for this fleet, with rotation at `max_size` bytes."""
    text = tool.render_config(fleet)
    if tool.name == "orch":
        text = text.replace("[orchestrator]\n", f"[orchestrator]\nlog_max_size = {max_size}\n", 1)
    else:
        text = text.replace("redirect_stderr=true\n",
                            f"redirect_stderr=true\nstdout_logfile_maxbytes={max_size}\n"
                            "stdout_logfile_backups=20\n")
    tool.fleet = fleet
    (tool.config_path).write_text(text)


def log_files(folder: Path) -> dict[str, list[Path]]:
    """Every child's log files under `folder` by token, oldest rotation first."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            match = re.match(r"^(lw\d{9})\.log(?:\.(\d+))?$", name)
            if match:
                found.setdefault(match.group(1), []).append((-int(match.group(2) or 0), Path(dirpath, name)))
    return {token: [path for _, path in sorted(paths)] for token, paths in found.items()}


def check(files: dict[str, list[Path]], tokens: list[str]) -> dict[str, int]:
    """Lines read back, lines cut (not the last), numbers missing, and children without a file."""
    counts = {"lines": 0, "split": 0, "lost": 0, "missing_files": 0}
    for token in tokens:
        paths = files.get(token)
        if not paths:
            counts["missing_files"] += 1
            continue
        seqs = []
        for number, path in enumerate(paths):  # a line cut across two rotated files counts
            lines = path.read_bytes().split(b"\n")
            for index, line in enumerate(lines):
                match = LINE_RE.match(line)
                if match and match.group(1) == token.encode() and len(line) == LINE - 1:
                    seqs.append(int(match.group(2)))
                elif line and not (number == len(paths) - 1 and index == len(lines) - 1):
                    counts["split"] += 1  # not whole, and not the newest file's cut last line
        counts["lines"] += len(seqs)
        if seqs:
            counts["lost"] += (max(seqs) - min(seqs) + 1) - len(set(seqs)) + min(seqs)
    return counts


class OrchAt(Orch):
    """orch run from another source tree (`--before PATH`: an export of an older commit)."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = root

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = self.root
        return env


def make_tool(name: str, before: str | None) -> Tool:
    return OrchAt(before) if name == "orch-before" and before else tool_class(name)()


def io_counts(pid: int) -> tuple[int, int]:
    """(read, write) system calls made by `pid` so far."""
    try:
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(fields["syscr"]), int(fields["syscw"])
    except (OSError, KeyError, ValueError):
        return 0, 0


def session(tool: Tool, writers: int, rate: int, seconds: float, max_size: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="orchbench-logs-"))
    tool.setup(workdir)
    try:
        script = workdir / "logwriter.py"
        script.write_text(WRITER)
        fleet = fleets.writer_fleet(writers, script, rate)
        configure(tool, fleet, max_size)
        launch(tool, fleet, 60)
        time.sleep(SETTLE)
        helpers = Scanner(fleet.tag, tool.pid).snapshot().helpers()
        before, calls = _bytes(log_files(workdir)), io_counts(tool.pid)
        start = time.perf_counter()
        cpu, _ = cpu_percent(helpers, seconds)
        elapsed = time.perf_counter() - start
        mbs = (_bytes(log_files(workdir)) - before) / elapsed / 1e6
        calls = tuple((after - was) / elapsed for after, was in zip(io_counts(tool.pid), calls))
        tool.stop()
        deadline = time.monotonic() + 30
        while not tool.exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = {"cpu": cpu, "mbs": mbs, "reads": calls[0], "writes": calls[1], **check(log_files(workdir), [i.token for i in fleet.instances])}
        return result
    finally:
        tool.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _bytes(files: dict[str, list[Path]]) -> int:
    total = 0
    for paths in files.values():
        for path in paths:
            try:
                total += path.stat().st_size
            except OSError:
                pass
    return total


def render(rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace, label: str) -> str:
    before = " --before TREE" if rows.get("orch-before") else ""
    out = [f"## Logs: {args.writers} children x {args.rate / 1e6:g} MB/s ({label})", "",
           f"`python -m bench.logs --writers {args.writers} --rate {args.rate} --seconds {args.seconds:g} "
           f"--reps {args.reps}{before}`: CPU of the daemon and its helpers over {args.seconds:g} s, % of one core "
           f"(median of {args.reps}, min-max); rotation at {args.max_size // 1024} KiB for both; every "
           "line read back after a graceful stop.", "",
           "| tool | CPU % of a core | MB/s to files | % of a core per 10 MB/s | daemon reads/s, writes/s "
           "| lines read back whole | lines cut across two files | lines lost |",
           "|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        if not runs:
            continue
        cpus = sorted(r["cpu"] for r in runs)
        median = cpus[len(cpus) // 2]
        mbs = sorted(r["mbs"] for r in runs)[len(runs) // 2]
        per = sorted(10 * r["cpu"] / max(r["mbs"], 0.1) for r in runs)[len(runs) // 2]
        calls = sorted((r["reads"], r["writes"]) for r in runs)[len(runs) // 2]
        cut = sum(r["split"] for r in runs) // 2  # a line cut across two files leaves two pieces
        lost = sum(r["lost"] + r["missing_files"] for r in runs) - cut  # its number is missing too
        out.append(f"| {name} | {median:.1f} ({cpus[0]:.1f}-{cpus[-1]:.1f}) | {mbs:.1f} | {per:.2f} | "
                   f"{calls[0]:,.0f}, {calls[1]:,.0f} | {sum(r['lines'] for r in runs):,} | {cut} | {lost} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1_000_000, help="bytes a second per child")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-size", type=int, default=4 << 20)
    parser.add_argument("--tools", default="orch,supervisord")
    parser.add_argument("--label", default="after", help="the section's name in RESULTS.md")
    parser.add_argument("--before", metavar="PATH", help="also run `orch-before`: orch from this source tree")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    names = args.tools.split(",") + (["orch-before"] if args.before else [])
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(args.reps):
        for name in rows:  # interleaved, so a drift of the machine hits both alike
            tool = make_tool(name, args.before)
            missing = tool.missing()
            if missing:
                print(f"{name}: missing ({missing})", file=sys.stderr)
                continue
            result = session(tool, args.writers, args.rate, args.seconds, args.max_size)
            print(f"rep {rep + 1} {name}: {result}", file=sys.stderr, flush=True)
            rows[name].append(result)
    table = render(rows, args, args.label)
    print(table)
    if args.write_results:
        write_section(RESULTS_MD, f"logs-{args.label}", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
