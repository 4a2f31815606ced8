"""Watching the config file: watchdog's observer on the config's folders, its events
classified and acted on in the loop (observer.py).

Folders are watched, not files: an editor that saves by renaming replaces the inode, and a
ConfigMap swaps a `..data` symlink next to the config. A finished save (close after writing,
rename into place) applies after BURST seconds without another one, so a burst of saves is
one reload; a bare modification waits until the file has been quiet for `settle` seconds (a
writer pausing mid-file is not applied half-way); a config that disappears is being replaced
and is only reloaded (and reported missing) if it is still gone after `settle` seconds. The
master compares content digests, so a save that changes nothing is never applied.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from ..loop import EventLoop, Timer
from .observer import OVERFLOW, FolderWatch
from .saves import FINISHED, GONE, IGNORE, WRITING, classify, lookup_chain

log = logging.getLogger("orch")
BURST = 0.25  # a finished save is applied once no other save followed for this long
AHEAD = 0.05  # ...and read and expanded ahead once none followed for this long (Reloader.prepare)
DEFAULT_SETTLE = 2.0


class ConfigWatcher:
    """Calls `on_change(origin)` in the loop once a save of any of `files` is finished."""

    def __init__(self, loop: EventLoop, files: Iterable[Path], on_change: Callable[[str], Any],
                 settle: float = DEFAULT_SETTLE, patterns: Iterable[str] = (),
                 on_quiet: Callable[[], Any] | None = None, on_event: Callable[[], Any] | None = None):
        """`on_quiet()`: a finished save has had no event after it for AHEAD seconds (the
        reload may start its work then); `on_event()`: any event that touches the config,
        which makes such early work stale."""
        self.loop = loop
        self.on_change = on_change
        self.on_quiet, self.on_event = on_quiet, on_event
        self._ahead: Timer | None = None
        self.settle = settle
        self.files: tuple[str, ...] = ()
        self.patterns: tuple[str, ...] = ()
        self.watched: set[str] = set()  # every name a lookup of a source passes through
        self.inotify = FolderWatch(loop, self._event, self._relevant)
        self._timer: Timer | None = None
        self.set_files(files, patterns)

    def set_files(self, files: Iterable[Path], patterns: Iterable[str] = ()) -> None:
        """Watch these files, and any file matching `patterns` (includes created later)."""
        self.files = tuple(os.path.abspath(f) for f in files)
        self.patterns = tuple(os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
                              for p in patterns)
        self._rewatch()

    def _rewatch(self) -> None:
        """Follow the lookup chains again (a swapped symlink leads elsewhere) and watch their folders."""
        self.watched = {name for f in self.files for name in lookup_chain(f)}
        folders = {os.path.dirname(n) for n in self.watched} | {os.path.dirname(p) for p in self.patterns}
        folders = {f for f in folders if os.path.isdir(f)}
        watching = self.inotify.folders
        for folder in folders - watching:
            try:
                self.inotify.add(folder)
            except OSError as exc:  # removed again in between: the next event re-follows
                log.debug("cannot watch %s: %s", folder, exc)
        for folder in watching - folders:
            try:
                self.inotify.remove(folder)
            except OSError:
                pass

    def start(self) -> None:
        self.inotify.start()

    def stop(self) -> None:
        self._cancel()
        self.inotify.stop()

    def _relevant(self, event: tuple[str, str, str | None]) -> bool:
        """On the observer's thread: only events about watched names reach the loop (it
        reads `watched` and `patterns`, which the loop replaces whole, never changes)."""
        kind, src, dest = event
        watched = self.watched
        return kind == OVERFLOW or src in watched or dest in watched or self._matches(src) or self._matches(dest)

    def _matches(self, path: str | None) -> bool:
        return path is not None and any(fnmatch.fnmatch(path, p) for p in self.patterns)

    def _event(self, kind: str, src: str, dest: str | None) -> None:
        if kind == OVERFLOW:  # events were lost: follow the folders again, and read the file
            if self.on_event is not None:
                self.on_event()
            self._rewatch()
            self._arm(BURST, "file events overflowed", "another save follows")
            return
        watched = self.watched | {p for p in (src, dest) if self._matches(p)}
        verdict = classify(kind, src, dest, watched, kind == "created" and os.path.islink(src))
        if verdict == IGNORE:
            return
        if self.on_event is not None:
            self.on_event()
        if kind in ("moved", "created", "deleted"):
            self._rewatch()
        if verdict == FINISHED:
            self._arm(BURST, f"file {kind}", "another save follows")
            if self.on_quiet is not None:
                self._ahead = self.loop.call_later(AHEAD, self._quiet)
        elif verdict == WRITING:
            self._arm(self.settle, "file modified", "the writer writes on")
        elif verdict == GONE and all(os.path.exists(f) for f in self.files):
            self._arm(self.settle, "file replaced", "the writer writes on")
        elif verdict == GONE:
            self._arm(self.settle, f"file {kind}", "it comes back")

    def _arm(self, delay: float, origin: str, waiting: str) -> None:
        """(Re)start the one timer: each event postpones the reload, the last one decides when."""
        self._cancel()
        log.debug("config save (%s): reload in %.2fs unless %s", origin, delay, waiting)
        self._timer = self.loop.call_later(delay, lambda: self._fire(origin))

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None

    def _quiet(self) -> None:
        self._ahead = None
        self.on_quiet()

    def _fire(self, origin: str) -> None:
        self._timer = None
        self.on_change(origin)
