"""Reading instances' output pipes on the loop, in few large reads.

Read the moment a pipe turned readable, a chatty child costs the master a wake-up, a read
and a write for every burst it writes: 50 children logging 1 MB/s each in 10 ms bursts made
5,000 of each a second, 24 % of a core (bench/RESULTS.md, "Logs"). So a pipe that gave
data is taken off the selector and read again by one shared timer every BATCH seconds,
then everything it holds at once (one read, one write to the log file); only a pipe found
empty then goes back on the selector. A quiet child's line is therefore written at once,
a chatty one's at most BATCH later, and the master's work follows the number of chatty
pipes, not their bytes. A pipe whose read came back at least half full is grown (up to
GROWN bytes, where the kernel allows it) so that a burst waiting for the timer does not
block its writer. Only the chunks are handled here: no per-line work (the foreground echo
does its own, only when asked for).
"""

from __future__ import annotations

import fcntl
import os
from typing import Callable

from ..loop import EventLoop, Timer

BATCH = 0.05  # seconds between reads of a pipe that keeps talking
GROWN = 1 << 20  # bytes: a pipe that keeps filling up is grown to this (pipe-max-size's default)
READ = 1 << 20  # bytes at most per read; a pipe holds no more than GROWN
_DEFAULT_PIPE = 1 << 16

Writer = Callable[[bytes], None]


class OutputPump:
    """Every instance output pipe of one master: `add` one, it is read until EOF, then closed."""

    def __init__(self, loop: EventLoop, batch: float = BATCH) -> None:
        self.loop = loop
        self.batch = batch
        self._writers: dict[int, Writer] = {}  # every open pipe's read end -> where its data goes
        self._sizes: dict[int, int] = {}  # pipe capacity, where grown
        self._paused: set[int] = set()  # off the selector until the next tick
        self._timer: Timer | None = None
        self._owners: dict[int, object] = {}  # fd -> the instance it belongs to
        self._fds: dict[object, set[int]] = {}  # and back

    def add(self, fd: int, write: Writer, owner: object = None) -> None:
        """Read the pipe `fd` (non-blocking) into `write` until every writer has closed it."""
        self._writers[fd] = write
        if owner is not None:
            self._owners[fd] = owner
            self._fds.setdefault(owner, set()).add(fd)
        self.loop.add_reader(fd, lambda: self._readable(fd))

    def __len__(self) -> int:
        return len(self._writers)

    def writers(self) -> dict[int, Writer]:
        """Every open pipe's read end and where its data goes (an upgrade hands them over)."""
        return dict(self._writers)

    def _readable(self, fd: int) -> None:
        got = self._read(fd)
        if got is None:
            return  # closed
        if got:
            self.loop.remove_reader(fd)
            self._paused.add(fd)
            if self._timer is None:
                self._timer = self.loop.call_later(self.batch, self._tick)

    def _tick(self) -> None:
        """Read every paused pipe; those that gave nothing wait on the selector again."""
        self._timer = None
        for fd in list(self._paused):
            got = self._read(fd)
            if got == 0:
                self._paused.discard(fd)
                self.loop.add_reader(fd, lambda fd=fd: self._readable(fd))
        if self._paused:
            self._timer = self.loop.call_later(self.batch, self._tick)

    def _read(self, fd: int) -> int | None:
        """Bytes read and handed on (0: nothing there), or None once the pipe was closed."""
        try:
            data = os.read(fd, READ)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""  # as good as EOF: nothing more can come from it
        if not data:
            self._close(fd)
            return None
        self._writers[fd](data)
        if len(data) * 2 >= self._sizes.get(fd, _DEFAULT_PIPE) and self._sizes.get(fd, 0) < GROWN:
            self._grow(fd)
        return len(data)

    def _grow(self, fd: int) -> None:
        try:
            self._sizes[fd] = fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, GROWN)
        except OSError:  # over pipe-max-size or the user's pipe pages: it stays as it is
            self._sizes[fd] = GROWN

    def _close(self, fd: int) -> None:
        if fd in self._paused:
            self._paused.discard(fd)
        else:
            self.loop.remove_reader(fd)
        self._writers.pop(fd, None)
        self._sizes.pop(fd, None)
        owner = self._owners.pop(fd, None)
        if owner is not None:
            fds = self._fds[owner]
            fds.discard(fd)
            if not fds:
                del self._fds[owner]
        os.close(fd)

    def drain(self, owner: object = None) -> None:
        """Hand on what the pipes of `owner` (default: every pipe) hold now: an instance
        that just ended (its last lines are in its log before anyone reads them, a hook's
        stdin), or the master about to exit. Nothing stays unread behind a timer."""
        for fd in list(self._writers if owner is None else self._fds.get(owner, ())):
            while fd in self._writers and self._read(fd):
                pass
