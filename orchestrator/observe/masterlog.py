"""The master's own log: records are formatted at once but written to stderr once per loop turn.

A StreamHandler on `sys.stderr` costs a write(2) per record (stderr is line-buffered). At
5,000 instances a start, a stop or a large reload logs a line per instance, and those
writes were about a third of the master's CPU over a start and a stop. `TurnHandler` keeps the lines in a
64 KiB buffer instead; the event loop flushes it before every wait that may block
(`EventLoop.before_wait`), and `up.py` flushes it before the master exits. So a line
reaches the file within the turn that logged it, and lines keep their order.

It writes to fd 2 itself (not a copy), so anything that points fd 2 elsewhere (the
detached master's log file) is followed. What is lost if the master is SIGKILLed: the
lines of the turn it was in, which a SIGKILL would have cut short anyway.
"""

from __future__ import annotations

import io
import logging

BUFFER = 1 << 16


class TurnHandler(logging.StreamHandler):
    """A StreamHandler that does not flush after each record; call `flush()` to write out."""

    def __init__(self, fd: int = 2) -> None:
        raw = io.FileIO(fd, "wb", closefd=False)
        super().__init__(io.TextIOWrapper(io.BufferedWriter(raw, BUFFER), encoding="utf-8",
                                          errors="backslashreplace", line_buffering=False))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)

    def flush(self) -> None:
        try:
            super().flush()
        except (OSError, ValueError):
            pass  # stderr is gone (a closed pipe): there is no one left to tell
