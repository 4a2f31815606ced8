"""One event loop: a selector over fds, signals through a wakeup socket, timers in a heap.

Signal handlers do nothing but let CPython write the signal number to the wakeup socket;
every reaction runs later, in the loop, so no work happens inside a handler.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import selectors
import signal
import time
from typing import Callable

from .wakeup import nonblocking_pair

Callback = Callable[[], None]
log = logging.getLogger("orch")

# epoll takes a wait of at most INT_MAX milliseconds (24.8 days) and raises OverflowError
# past it: a loop never waits longer than a day at a time, and a timer is never further out
# than ten years, so `max_lifetime = "30d"` (or any slip in a computed delay) cannot end it.
MAX_WAIT = 86400.0
MAX_DELAY = 10 * 365 * 86400.0


class Timer:
    """A cancellable call scheduled on the loop's monotonic clock."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callback):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Coalesced:
    """A callback run once per loop wake-up however often it is asked for (500 exits must
    not cost 500 scans of the fleet)."""

    __slots__ = ("loop", "callback", "pending")

    def __init__(self, loop: "EventLoop", callback: Callback) -> None:
        self.loop, self.callback, self.pending = loop, callback, False

    def __call__(self) -> None:
        if not self.pending:
            self.pending = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self.pending = False
        self.callback()


class EventLoop:
    """Selector + timers + signals; `run()` until `stop()`.

    `clock` is the monotonic clock timers run on; tests pass a fake one and drive the loop
    with `run_once()`, so backoff, rollouts and limits replay in milliseconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.time = clock
        self.selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._soon: list[Callback] = []
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._running = False
        self._wake_r, self._wake_w = nonblocking_pair()  # the wakeup fd once a signal is handled
        self.add_reader(self._wake_r.fileno(), self._on_wakeup)
        self._old_wakeup_fd: int | None = None
        self._threadsafe: collections.deque[Callback] = collections.deque()
        # run before every wait that may block: the master's log handler writes out here,
        # so a burst of events costs one write(2), not one per line
        self.before_wait: list[Callback] = []

    # --- fds -----------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callback) -> None:
        self._watch(fd, 0, callback)

    def remove_reader(self, fd: int) -> None:
        self._watch(fd, 0, None)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._watch(fd, 1, callback)

    def remove_writer(self, fd: int) -> None:
        self._watch(fd, 1, None)

    def _watch(self, fd: int, slot: int, callback: Callback | None) -> None:
        try:
            key = self.selector.get_key(fd)
            handlers = list(key.data)
        except (KeyError, ValueError):
            key, handlers = None, [None, None]
        handlers[slot] = callback
        mask = (selectors.EVENT_READ if handlers[0] else 0) | (selectors.EVENT_WRITE if handlers[1] else 0)
        if key is not None and not mask:
            self.selector.unregister(fd)
        elif key is not None:
            self.selector.modify(fd, mask, handlers)
        elif mask:
            self.selector.register(fd, mask, handlers)

    # --- timers ----------------------------------------------------------------
    def call_later(self, delay: float, callback: Callback) -> Timer:
        delay = delay if 0.0 <= delay <= MAX_DELAY else (MAX_DELAY if delay > 0 else 0.0)  # NaN: now
        timer = Timer(self.time() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._counter), timer))
        return timer

    def call_soon(self, callback: Callback) -> None:
        """Run after the current batch of events (coalesces work within one wake-up)."""
        self._soon.append(callback)

    # --- signals ---------------------------------------------------------------
    def add_signal_handler(self, signum: int, callback: Callable[[int], None]) -> None:
        """React to a signal in the loop. The Python-level handler is a no-op so that
        SIGCHLD (ignored by default) still reaches the wakeup fd."""
        self._signal_handlers[signum] = callback
        signal.signal(signum, _noop_handler)
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    def call_soon_threadsafe(self, callback: Callback) -> None:
        """Run `callback` in the loop; the only entry point for other threads (the file watcher)."""
        self._threadsafe.append(callback)
        self.wake()

    def wake(self) -> None:
        """Wake the loop from another thread."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already has pending bytes: the loop will wake anyway

    def take_signals(self) -> list[int]:
        """Handled signals that arrived but whose handlers have not run (an upgrade's exec
        raises them again, so the next master handles them); the loop forgets them."""
        try:
            data = self._wake_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return []
        self.wake()  # any call_soon_threadsafe that woke it still runs
        return [signum for signum in dict.fromkeys(data) if signum in self._signal_handlers]

    def _on_wakeup(self) -> None:
        try:
            data = self._wake_r.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        for signum in dict.fromkeys(data):  # coalesce repeats, keep order
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                self._call(lambda: handler(signum))
        while self._threadsafe:
            self._soon.append(self._threadsafe.popleft())

    # --- running ---------------------------------------------------------------
    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            self._run_soon()
            if not self._running:
                break
            timeout = self._next_timeout()
            if timeout != 0:
                for callback in self.before_wait:
                    self._call(callback)
            self.run_once(timeout)

    def run_once(self, timeout: float | None = 0) -> None:
        """One turn: wait up to `timeout` for fds, run their callbacks, due timers and soon calls."""
        for key, mask in self.selector.select(timeout):
            reader = key.data[0]
            # An earlier callback of this batch may have removed this reader and closed its
            # fd, whose number a new pipe or socket may already hold: only the registration
            # still in place runs (a stale one read and closed another owner's fd).
            if mask & selectors.EVENT_READ and reader is not None and self._current(key.fd, 0) is reader:
                self._call(reader)
            if mask & selectors.EVENT_WRITE and key.data[1] is not None:
                writer = self._current(key.fd, 1)  # the reader may have closed it
                if writer is not None:
                    self._call(writer)
        self._run_timers()
        self._run_soon()

    def _current(self, fd: int, slot: int) -> Callback | None:
        """The reader (slot 0) or writer (1) registered for `fd` now."""
        key = self.selector.get_map().get(fd)
        return None if key is None else key.data[slot]

    @staticmethod
    def _call(callback: Callback) -> None:
        """Run one callback; a bug in one handler must not take the master and its fleet down."""
        try:
            callback()
        except Exception:  # noqa: BLE001
            log.exception("internal error in the event loop (the master keeps running)")

    def _next_timeout(self) -> float | None:
        if self._soon:
            return 0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return min(MAX_WAIT, max(0.0, self._timers[0][0] - self.time()))

    def _run_timers(self) -> None:
        now = self.time()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                self._call(timer.callback)

    def _run_soon(self) -> None:
        while self._soon:
            batch, self._soon = self._soon, []
            for callback in batch:
                self._call(callback)

    def close(self) -> None:
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
        for signum in self._signal_handlers:
            signal.signal(signum, signal.SIG_DFL)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _noop_handler(signum: int, frame: object) -> None:
    """The wakeup fd does the work; see EventLoop.add_signal_handler."""
