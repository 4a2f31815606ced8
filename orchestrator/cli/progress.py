"""One updating progress line for commands that wait: done / total, what is awaited, elapsed time.

Only on a terminal (stderr): piped or redirected, nothing extra is printed. The line appears
after a short delay, so an operation that finishes at once prints nothing at all, and it is
erased before the command prints its result. `follow()` polls the master's `status` from a
helper thread while the main thread blocks in a request (`down`, `restart`, ...), so it works
both for commands that wait for completion and for ones that return at once.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from ..control.client import ControlClient, ControlError
from ..errors import OrchError

Row = dict[str, Any]
Counts = tuple[int, int]
ALIVE = ("starting", "running", "stopping")
FAILURES = (OrchError, ControlError, OSError, ValueError)
BAR = 20


def progress_line(what: str, done: int | None, total: int | None, elapsed: float, width: int) -> str:
    """`what  12/40 [######--------------]  3.2s`, cut to `width` (pure)."""
    text = what
    if total:
        filled = BAR * min(done or 0, total) // total
        text += f"  {done}/{total} [{'#' * filled}{'-' * (BAR - filled)}]"
    text += f"  {elapsed:.1f}s"
    return text[:max(width - 1, 0)]  # never the last column: some terminals wrap there


def count(rows: list[Row], goal: str, before: dict[str, int | None]) -> Counts:
    """(done, total) over the instances in `before` (name -> pid when the operation began).

    Goals: "stopped" (stop), "running" (start), "restarted" (running with a new pid),
    "gone" (down: no longer alive, or no longer listed)."""
    now = {row["name"]: row for row in rows}
    done = 0
    for name, pid in before.items():
        row = now.get(name)
        if goal == "gone":
            done += row is None or row["state"] not in ALIVE
        elif row is None:
            continue
        elif goal == "stopped":
            done += row["state"] in ("stopped", "exited")
        elif goal == "running":
            done += row["state"] == "running"
        elif goal == "restarted":
            done += row["state"] == "running" and row["pid"] != pid
    return done, len(before)


class Progress:
    """The line itself: `show()` redraws it (throttled), `clear()` erases it."""

    def __init__(self, what: str, stream: TextIO | None = None, delay: float = 0.3,
                 clock: Callable[[], float] = time.monotonic):
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream)
        self.delay = delay
        self.clock = clock
        self.started = clock()
        self.shown = False
        self.last_draw = 0.0

    def show(self, done: int | None = None, total: int | None = None, what: str | None = None) -> None:
        now = self.clock()
        if not self.enabled or now - self.started < self.delay or now - self.last_draw < 0.1:
            return
        width = shutil.get_terminal_size().columns
        line = progress_line(what or self.what, done, total, now - self.started, width)
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self.shown, self.last_draw = True, now

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _status(socket: Path, patterns: list[str] | None) -> list[Row]:
    client = ControlClient(socket, timeout=5)
    try:
        return client.call("status", patterns=patterns)["instances"]
    finally:
        client.close()


@contextlib.contextmanager
def follow(socket: Path, what: str, goal: str, patterns: list[str] | None = None,
           stream: TextIO | None = None, interval: float = 0.2) -> Iterator[None]:
    """Show `what  done/total` for the instances matching `patterns` while the block runs.

    Off a terminal this is a no-op and costs no request. On one, a first `status` records which
    instances are concerned (and their pids, for "restarted"); if that fails the block runs
    without a line and reports its own error."""
    progress = Progress(what, stream)
    before: dict[str, int | None] = {}
    if progress.enabled:
        try:
            rows = _status(socket, patterns)
        except FAILURES:
            progress.enabled = False
        else:
            before = {r["name"]: r["pid"] for r in rows if goal != "gone" or r["state"] in ALIVE}
    if not progress.enabled:
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_poll, args=(progress, socket, patterns, goal, before, stop, interval),
                              name="orch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        progress.clear()


def _poll(progress: Progress, socket: Path, patterns: list[str] | None, goal: str,
          before: dict[str, int | None], stop: threading.Event, interval: float) -> None:
    done, total = 0, len(before)
    what = progress.what
    while not stop.wait(interval):
        try:
            done, total = count(_status(socket, patterns), goal, before)
            what = progress.what
        except FAILURES:
            # `down`: the master has closed its socket and is about to exit.
            what = "waiting for the master to exit" if goal == "gone" else "waiting for the master"
        if not stop.is_set():
            progress.show(done, total, what)
