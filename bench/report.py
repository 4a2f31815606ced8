"""The Markdown table (figures, ratios to the floor and to orch), machine info, JSON dump."""

from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from .scenarios import (FIGURES, FLEET_KEYS, MATRIX_KEYS, ORCH_KEYS, POLL, CRASH_POLL, SETTLE, QUIET_WINDOW,
                        Figure, Options, Results)
from .tools import Tool

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def machine_info(tools: dict[str, Tool]) -> dict[str, Any]:
    """CPU model, cores, kernel, Python, tool versions and the date."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": {name: tool.version() if not tool.missing() else "not installed" for name, tool in tools.items()},
    }


# -- cells --------------------------------------------------------------------------------

def _num(value: float, unit: str) -> str:
    """One value with its unit; times as ms below 1 s."""
    if unit == "s":
        return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"
    if unit == "count":
        return f"{value:g}"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:.3g}" + (" %" if unit == "%" else f" {unit}")


class Footnotes:
    """n/a reasons, numbered once each."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def ref(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"[{self.reasons.index(reason) + 1}]"


def cell(figure: Figure | None, notes: Footnotes) -> str:
    if figure is None:
        return "–"
    if not figure.samples:
        return "n/a " + notes.ref(figure.errors[0] if figure.errors else "not measured")
    unit = figure.unit
    text = _num(figure.median, unit)  # type: ignore[arg-type]
    if min(figure.samples) != max(figure.samples):
        text += f" ({_num(min(figure.samples), unit)}–{_num(max(figure.samples), unit)})"
    if figure.note:
        text += " " + notes.ref(figure.note)
    if figure.errors:
        text += " " + notes.ref(f"{len(figure.errors)} sample(s) failed: {figure.errors[0]}")
    return text


def ratio(a: Figure | None, b: Figure | None) -> str:
    """a's median over b's, as ×R; – when either is missing or meaningless."""
    if a is None or b is None or a.median is None or b.median is None or a.unit == "count":
        return "–"
    if b.median <= 0:
        return "∞" if a.median > 0 else "–"
    r = a.median / b.median
    return f"×{r:.3g}" if r < 1000 else f"×{r:.0f}"


# -- the table ----------------------------------------------------------------------------

def rows(results: Results, opts: Options) -> list[tuple[str, int]]:
    out = [(key, n) for n in sorted(opts.sizes)
           for key in FLEET_KEYS + (["limits_cpu", *MATRIX_KEYS] if "orch" in opts.tools else [])]
    if "orch" in opts.tools:
        out += [("py_start_plain", opts.py_workers), ("py_start_preload", opts.py_workers),
                ("log_cpu", opts.log_writers), ("log_rate", opts.log_writers)]
    return out


def render_table(results: Results, opts: Options) -> str:
    """One Markdown table: figures per tool, ratios to the floor and to orch, footnotes."""
    tools = opts.tools
    ratio_cols: list[tuple[str, str]] = []
    if "floor" in tools:
        ratio_cols += [(t, "floor") for t in tools if t != "floor"]
    if "orch" in tools:
        ratio_cols += [(t, "orch") for t in tools if t not in ("floor", "orch")]
    header = ["figure", "N", *tools, *[f"{a} ÷ {b}" for a, b in ratio_cols]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * (len(header) - 2)) + "|"]
    notes = Footnotes()
    for key, n in rows(results, opts):
        figs = {t: results.figures.get((t, key, n)) for t in tools}
        cells = [cell(figs[t], notes) for t in tools]
        ratios = [ratio(figs[a], figs[b]) for a, b in ratio_cols]
        lines.append("| " + " | ".join([key, str(n), *cells, *ratios]) + " |")
    lines.append("")
    lines.append("Cells: median (min–max) over the samples; ratios compare medians (×1 = same).")
    for i, reason in enumerate(notes.reasons, 1):
        lines.append(f"[{i}] {reason}  ")
    return "\n".join(lines)


# Issue 6's targets for orch: (figure, bound, kind, text). kind "max": the median is at most
# the bound (in the figure's unit); kind "floor": at most bound x the floor's median.
TARGETS = [
    ("start", 1.5, "floor", "start within 1.5x of the floor"),
    ("reload_one", 0.050, "max", "reload-one under 50 ms"),
    ("reload_one_collateral", 0, "max", "reload-one: no collateral restart"),
    ("reload_10pct", 0.200, "max", "reload-10% under 200 ms"),
    ("reload_10pct_collateral", 0, "max", "reload-10%: no collateral restart"),
    ("crash", 0.010, "max", "crash replacement under 10 ms (median)"),
    ("shutdown", 0.5, "max", "shutdown under 0.5 s"),
    ("status", 0.100, "max", "one status query under 100 ms (through the CLI)"),
    ("idle_cpu", 0.1, "max", "idle under 0.1 % of a core (no limits configured)"),
    ("limits_cpu", 1.0, "max", "idle under 1 % of a core, memory limits on every instance"),
    ("idle_rss", 30.0, "max", "RSS under 30 MiB (master and helpers together)"),
    ("idle_pss", 30.0, "max", "PSS under 30 MiB (master and helpers, shared pages counted once)"),
]


# Issue 15's targets at scale (N >= 5,000), same form.
SCALE = 5000
SCALE_TARGETS = [
    ("start", 5.0, "max", "start under 5 s"),
    ("start", 1.5, "floor", "start within 1.5x of the floor"),
    ("status", 0.300, "max", "one status query under 300 ms (through the CLI)"),
    ("reload_one", 0.100, "max", "reload-one under 100 ms"),
    ("reload_10pct", 1.0, "max", "reload-10% under 1 s"),
    ("reload_10pct_collateral", 0, "max", "reload-10%: no collateral restart"),
    ("crash", 0.010, "max", "crash replacement under 10 ms (median)"),
    ("shutdown", 2.0, "max", "shutdown under 2 s"),
    ("idle_cpu", 0.1, "max", "idle under 0.1 % of a core (no limits configured)"),
    ("limits_cpu", 2.0, "max", "idle under 2 % of a core, memory limits on every instance"),
    ("idle_rss", 40.0, "max", "RSS under 40 MiB (master and helpers together)"),
]


# Issue 31's targets ("at the machine's limit"), by N.
MACHINE_TARGETS = {
    500: [("start", 1.5, "floor", "start within 1.5x of the floor (500 templates)"),
          ("start_matrix", 1.5, "floor:start", "start within 1.5x of the floor (one matrix template)"),
          ("crash", 0.005, "max", "crash replacement median under 5 ms"),
          ("crash_p99", 0.020, "max", "crash replacement p99 under 20 ms"),
          ("reload_one", 0.050, "max", "reload-one (SIGHUP) under 50 ms"),
          ("reload_save", 0.300, "max", "a save alone: within its 250 ms burst window + 50 ms"),
          ("status", 0.100, "max", "`orch status --json` under 100 ms")],
    5000: [("start", 3.5, "max", "start under 3.5 s"),
           ("start_matrix", 3.5, "max", "start under 3.5 s (one matrix template)"),
           ("crash", 0.005, "max", "crash replacement median under 5 ms"),
           ("crash_p99", 0.020, "max", "crash replacement p99 under 20 ms"),
           ("reload_one", 0.100, "max", "reload-one (SIGHUP) under 100 ms"),
           ("reload_save", 0.300, "max", "a save alone: within its 250 ms burst window + 50 ms"),
           ("status", 0.200, "max", "`orch status --json` under 200 ms")],
}


def render_targets(results: Results, opts: Options) -> str:
    """Where orch stands against its targets, each marked met or not: issue 6's at the
    largest N below SCALE, issue 15's at SCALE and above."""
    small = [n for n in opts.sizes if n < SCALE]
    large = [n for n in opts.sizes if n >= SCALE]
    parts = []
    if small:
        parts.append(_target_table(results, max(small), TARGETS))
    if large:
        parts.append(_target_table(results, max(large), SCALE_TARGETS))
    for n, targets in MACHINE_TARGETS.items():
        if n in opts.sizes:
            parts.append(_target_table(results, n, targets, "issue 31's targets"))
    return "\n\n".join(parts)


def _target_table(results: Results, n: int, targets: list, title: str = "orch's targets") -> str:
    lines = [f"Against {title} (N = {n}):", "", "| target | orch | reference | verdict |",
             "|---|--:|--:|---|"]
    for key, bound, kind, text in targets:
        fig = results.figures.get(("orch", key, n))
        if fig is None or fig.median is None:
            lines.append(f"| {text} | n/a | | not measured |")
            continue
        limit: float | None = bound
        reference = _num(bound, fig.unit)
        if kind.startswith("floor"):  # "floor:KEY" compares with the floor's KEY
            floor = results.figures.get(("floor", kind.partition(":")[2] or key, n))
            limit = bound * floor.median if floor is not None and floor.median is not None else None
            reference = f"{bound:g} × floor = {_num(limit, fig.unit)}" if limit is not None else "no floor"
        verdict = "n/a" if limit is None else ("met" if fig.median <= limit else "not met")
        lines.append(f"| {text} | {_num(fig.median, fig.unit)} | {reference} | {verdict} |")
    return "\n".join(lines)


def render_notes(opts: Options, tools: dict[str, Tool]) -> str:
    """What each figure means and the settings used."""
    lines = ["Figures (all times from /proc, never from the tools' own status):", ""]
    for key, (unit, text) in FIGURES.items():
        if key in ORCH_KEYS and "orch" not in opts.tools:
            continue
        lines.append(f"- `{key}` ({unit}): {text}")
    lines += [
        "",
        f"Method: fleet = N × `/bin/sleep <unique arg>`, the same for every tool. {opts.reps} repetition(s) "
        f"per tool and N (a fresh daemon each); tools interleaved within a repetition. Idle window "
        f"{opts.idle_seconds:g} s (first repetition, after a {SETTLE:g} s settle, from when the daemon first used "
        f"under 1 % of a core over {QUIET_WINDOW:g} s, at most {opts.quiet_cap:g} s later; the same for the limits "
        "window); crash: "
        f"{opts.crash_kills} SIGKILLs of distinct children in the first repetition. Collateral restarts "
        f"are counted {SETTLE:g} s after convergence. /proc polled every {POLL * 1000:g} ms "
        f"({CRASH_POLL * 1000:g} ms for crash); crash and reload watch only the pids handed out "
        f"since the kill or the save (/proc/sys/kernel/ns_last_pid) and the pids meant to end, not "
        f"the daemon's whole children list. A step whose first sample takes over "
        f"{opts.slow_seconds:g} s is not repeated; one that hits its time cap shows n/a with the cap. "
        f"Orch-only: {opts.py_workers} Python workers (app-like stdlib imports) until each ran init(); "
        f"{opts.log_writers} children each writing 1 MB/s to stdout over {opts.log_seconds:g} s. Every "
        f"daemon runs in the foreground with the open-files soft limit raised to the hard limit. CPU is "
        f"the sum over the daemon's non-fleet processes and all their threads (/proc/PID/task/*/schedstat, ns).",
        "",
        "Settings:",
        "",
    ]
    for name, tool in tools.items():
        lines.append(f"- **{name}** {tool.version()}: {tool.settings()}")
    return "\n".join(lines)


def render_machine(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    damon = f" Host memory monitor: {info['damon']}." if info.get("damon") else ""
    return (f"Machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, "
            f"Python {info['python']}; {versions}. Date: {info['date']}.{damon}")


SECTION_PREFIX = "<!-- bench section: "


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) bench module `name`'s section of RESULTS.md, keeping the main
    table and every other module's section; the main bench's rewrite keeps them all."""
    mark = f"{SECTION_PREFIX}{name} -->"
    text = path.read_text() if path.exists() else ""
    parts = re.split(rf"(?m)^(?={re.escape(SECTION_PREFIX)})", text)
    head, sections = parts[0], [s for s in parts[1:] if not s.startswith(mark)]
    sections.append(f"{mark}\n{body.strip()}\n\n")
    path.write_text(head.rstrip("\n") + "\n\n" + "".join(sections))


def write_results(path: Path, table: str, notes: str, info: dict[str, Any], command: str,
                  targets: str = "") -> None:
    old = path.read_text() if path.exists() else ""
    cut = old.find(SECTION_PREFIX)
    kept = old[cut:] if cut >= 0 else ""  # the sections other bench modules wrote
    path.write_text(
        "# orch vs supervisord vs circus: benchmark results\n\n"
        f"Produced by `{command}` (rewrite with `--write-results`).\n\n"
        f"{render_machine(info)}\n\n{table}\n\n" + (f"{targets}\n\n" if targets else "") + f"{notes}\n"
        + (f"\n{kept}" if kept else ""))


def from_json(data: dict[str, Any]) -> tuple[Results, Options, dict[str, Any]]:
    """A run saved with --json, back as results, options and machine info (to re-render it)."""
    results = Results()
    for f in data["figures"]:
        figure = results.get(f["tool"], f["key"], f["n"])
        figure.samples, figure.errors, figure.note = list(f["samples"]), list(f["errors"]), f["note"]
    return results, Options(**data["options"]), data["machine"]


def to_json(results: Results, opts: Options, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "machine": info,
        "options": {"sizes": opts.sizes, "tools": opts.tools, "reps": opts.reps,
                    "idle_seconds": opts.idle_seconds, "crash_kills": opts.crash_kills,
                    "py_workers": opts.py_workers, "log_writers": opts.log_writers,
                    "log_seconds": opts.log_seconds, "step_cap": opts.step_cap},
        "figures": [f.to_json() for f in results.figures.values()],
    }
