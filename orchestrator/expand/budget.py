"""Rendering under a budget: a template can loop, allocate or compute without end, and the
master renders on its one loop thread. What bounds it, so that no saved file freezes the
master or exhausts its memory:

- time: while a guarded section runs, SIGALRM ticks every TICK; a render that has held the
  thread's CPU for more than RENDER_SECONDS raises RenderError out of whatever Python it is
  in (Jinja's loops are Python). What one C call does at once (a huge power or repeat) is
  refused before it starts by the sandbox (sandbox.py).
- memory: the address space may grow by MEMORY_HEADROOM during the section (RLIMIT_AS,
  put back after): a huge string or list fails with MemoryError, made a RenderError.
- size: a rendered value may have at most VALUE_CHARS characters (or items).

The whole expansion is bounded by its caller (render.py: TOTAL_SECONDS, counted in the
sections only). Only the main thread can take SIGALRM: elsewhere only the memory and size
bounds hold.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading
import time
from typing import Iterator

RENDER_SECONDS = 0.1  # CPU seconds one value may take: legit renders take microseconds
TOTAL_SECONDS = 10.0  # seconds one expansion may spend rendering in all (10,000 instances: ~0.7 s)
VALUE_CHARS = 1 << 20
MEMORY_HEADROOM = 192 << 20
TICK = 0.025


class RenderError(Exception):
    """A render that failed or went past its budget; str() says which, in one line."""


class _Watch:
    """What the SIGALRM handler reads: the render in progress, if any, and since when."""

    rendering = False
    serial = 0  # bumped by every render: a new number means a new render
    seen = -1
    since = 0.0


def begin_render() -> None:
    _Watch.serial += 1
    _Watch.rendering = True


def end_render() -> None:
    _Watch.rendering = False


@contextlib.contextmanager
def set_up() -> Iterator[None]:
    """A one-time set-up met inside a render (importing Jinja and making its environments:
    80-100 ms of CPU on a loaded machine, near RENDER_SECONDS) that is no template's time:
    not counted, and the render's clock starts again after it."""
    was = _Watch.rendering
    _Watch.rendering = False
    try:
        yield
    finally:
        if was:
            begin_render()


def _tick(signum: int, frame: object) -> None:
    if not _Watch.rendering:
        return
    now = time.thread_time()
    if _Watch.seen != _Watch.serial:
        _Watch.seen, _Watch.since = _Watch.serial, now
    elif now - _Watch.since > RENDER_SECONDS:
        # The clock starts again: unwinding the render (freeing what it made, up to the
        # headroom) took more than a tick under load, and a second raise there escaped the
        # render's own handling. A render that swallows the error is stopped again later.
        _Watch.since = now
        raise RenderError(f"rendering took longer than {RENDER_SECONDS:g}s")


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Time and memory bounds for the renders inside (see the module's docstring)."""
    main = threading.current_thread() is threading.main_thread()
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    lowered = _lower_address_space(old_limit)
    old_handler = signal.signal(signal.SIGALRM, _tick) if main else None
    began = time.monotonic()
    old_timer = signal.setitimer(signal.ITIMER_REAL, TICK, TICK) if main else (0.0, 0.0)
    try:
        yield
    finally:
        _Watch.rendering = False
        if main:  # put back whatever alarm was set (pytest-timeout's, a caller's)
            left = old_timer[0] - (time.monotonic() - began) if old_timer[0] else 0.0
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
            if old_timer[0]:
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), old_timer[1])
        if lowered:
            resource.setrlimit(resource.RLIMIT_AS, old_limit)


def _lower_address_space(limit: tuple[int, int]) -> bool:
    """Lower the soft RLIMIT_AS to what is mapped now plus the headroom; False if it was
    lower already (or /proc cannot say)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            mapped = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return False
    soft, hard = limit
    wanted = mapped + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft <= wanted:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ValueError, OSError):
        return False
    return True


def check_size(value: object) -> None:
    """RenderError if a rendered value is bigger than VALUE_CHARS."""
    if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > VALUE_CHARS:
        raise RenderError(f"renders to {len(value):,} characters or items; "
                          f"a value may have up to {VALUE_CHARS:,}")


class Slices:
    """Time spent in an expansion's steps: when to yield to the loop, and the total budget."""

    def __init__(self, slice_seconds: float) -> None:
        self.slice = slice_seconds
        self.spent = 0.0
        self.template = ""  # the template being expanded, for a problem's key path
        self._began = 0.0

    def begin(self) -> None:
        self._began = time.monotonic()

    def end(self) -> None:
        self.spent += time.monotonic() - self._began

    def due(self) -> bool:
        """Time to hand the loop back (between two instances)."""
        return time.monotonic() - self._began > self.slice

    def over(self) -> bool:
        return self.spent + time.monotonic() - self._began > TOTAL_SECONDS
