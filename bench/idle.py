"""What the idle benchmarks (limits_idle, probes_idle) share: N sleeps under one orch in a
fresh folder, stopped gracefully; sessions interleaved across modes, so that a drift of the
machine hits every mode alike; and each figure's median (min-max) over the repetitions."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

from . import fleet as fleets
from .scenarios import launch
from .tools.orch import Orch

Rows = dict[tuple[Hashable, int], list[dict[str, Any]]]


@contextmanager
def sleeping(tool: Orch, prefix: str, n: int) -> Iterator[tuple[fleets.Fleet, float]]:
    """N sleeps under `tool` in a new temporary folder: (the fleet, seconds until all ran);
    whatever is left is killed and the folder removed on the way out."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    tool.setup(workdir)
    try:
        fleet = fleets.sleep_fleet(n)
        tool.write_config(fleet)
        yield fleet, launch(tool, fleet, 120 + 0.05 * n)
    finally:
        tool.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def stop(tool: Orch, timeout: float = 120.0) -> None:
    """A graceful stop of the whole fleet, waited for up to `timeout` seconds."""
    tool.stop()
    deadline = time.monotonic() + timeout
    while not tool.exited() and time.monotonic() < deadline:
        time.sleep(0.1)


def interleaved(sizes: str, reps: int, modes: tuple[Hashable, ...], label: str,
                session: Callable[[Hashable, int], dict[str, Any]]) -> Rows:
    """`session(mode, n)` for each size of the comma-separated `sizes`, `reps` rounds of every
    mode in turn; each result is printed to stderr as it comes (`label` names the mode)."""
    rows: Rows = {}
    for n in (int(x) for x in sizes.split(",")):
        for rep in range(reps):
            for mode in modes:
                result = session(mode, n)
                print(f"N={n} rep {rep + 1} {label}={mode}: {result}", file=sys.stderr, flush=True)
                rows.setdefault((mode, n), []).append(result)
    return rows


def by_size(rows: Rows) -> Iterator[tuple[Hashable, int, list[dict[str, Any]]]]:
    """(mode, n, runs) of the rows that have runs, smallest N first, then by mode."""
    for (mode, n), runs in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
        if runs:
            yield mode, n, runs


def median(runs: list[dict[str, Any]], key: str) -> float:
    """The middle value of `key` over the runs (the upper one of an even count)."""
    return sorted(r.get(key, 0) for r in runs)[len(runs) // 2]


def spread(runs: list[dict[str, Any]], key: str, digits: int) -> str:
    """`median (min-max)` of `key` over the runs, with `digits` decimals."""
    values = sorted(r[key] for r in runs)
    return f"{median(runs, key):.{digits}f} ({values[0]:.{digits}f}-{values[-1]:.{digits}f})"
