"""What the host does to every tool alike: the kernel's DAMON memory monitor.

This VM runs a kdamond on physical memory (`paddr`) with a `pageout` scheme, sampling every
0.5 s. At N = 5,000 sleeps, crash replacement had outliers of 15-106 ms every second or
third kill, for the floor as much as for orch (the floor's p99 67 ms, orch's 106 ms); the
same run with the kdamond off gave the floor's p99 4.7 ms and orch's 11.5 ms, and left
start, status and reload where they were (bench/RESULTS.md). Whatever the monitor's
sampling contends with (each sampled page's reverse map: a page of /bin/sleep or libc is
mapped 5,000 times), it is the host's, so the machine line of every run says whether it was on,
and `python -m bench --pause-damon` (root) turns it off for the run and back on after.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

ADMIN = Path("/sys/kernel/mm/damon/admin")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _kdamonds(admin: Path) -> list[Path]:
    return sorted(p for p in (admin / "kdamonds").glob("[0-9]*") if p.is_dir())


def damon(admin: Path = ADMIN) -> str | None:
    """One line on the running kdamonds ("DAMON on: paddr pageout, sampling every 0.5 s"),
    or None when none runs (or the kernel has no DAMON sysfs)."""
    running = []
    for kd in _kdamonds(admin):
        if _read(kd / "state") != "on":
            continue
        for ctx in sorted((kd / "contexts").glob("[0-9]*")):
            ops = _read(ctx / "operations") or "?"
            actions = sorted({_read(s / "action") for s in (ctx / "schemes").glob("[0-9]*")} - {""})
            sample = _read(ctx / "monitoring_attrs" / "intervals" / "sample_us")
            every = f", sampling every {int(sample) / 1e6:g} s" if sample.isdigit() else ""
            running.append(f"{ops} {'+'.join(actions) or 'monitoring only'}{every}")
    return f"DAMON on: {'; '.join(running)}" if running else None


@contextlib.contextmanager
def paused_damon(admin: Path = ADMIN) -> Iterator[list[Path]]:
    """Turn every running kdamond off for the block, and back on after it, whatever happens
    in it. Yields the kdamonds it paused (empty when none ran); needs root to write."""
    paused: list[Path] = []
    try:
        for kd in _kdamonds(admin):
            if _read(kd / "state") == "on":
                (kd / "state").write_text("off\n")
                paused.append(kd)
        yield paused
    finally:
        for kd in paused:
            (kd / "state").write_text("on\n")
