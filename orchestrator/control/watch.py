"""Watching the config file: watchdog on the config's folder, events posted into the loop.

The folder is watched, not the file: an editor that saves by renaming a temp file over
the config replaces the inode, and a watch on the old file would go silent. Close-after-
write and rename events apply at once; bare modifications (a truncate-and-rewrite in
progress) are debounced, so a half-written file is rarely read at all.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Callable, Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..loop import EventLoop, Timer

DEBOUNCE = 0.1


class ConfigWatcher(FileSystemEventHandler):
    """Calls `on_change` in the loop when any of `files` is saved."""

    def __init__(self, loop: EventLoop, files: Iterable[Path], on_change: Callable[[str], None]):
        self.loop = loop
        self.on_change = on_change
        self.files: set[str] = set()
        self.patterns: tuple[str, ...] = ()
        self.observer = Observer()
        self._watched_dirs: set[str] = set()
        self._debounce: Timer | None = None
        self.set_files(files)

    def set_files(self, files: Iterable[Path], patterns: Iterable[str] = ()) -> None:
        """Watch these files, and any file matching `patterns` (includes created later)."""
        self.files = {os.path.realpath(f) for f in files}
        self.patterns = tuple(os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
                              for p in patterns)
        folders = {os.path.dirname(f) for f in self.files} | {os.path.dirname(p) for p in self.patterns}
        for folder in {f for f in folders if os.path.isdir(f)} - self._watched_dirs:
            self.observer.schedule(self, folder, recursive=False)
            self._watched_dirs.add(folder)

    def start(self) -> None:
        self.observer.daemon = True
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=2)

    # Runs in watchdog's thread: only filter and hand over to the loop.
    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        paths = {os.path.realpath(os.fsdecode(event.src_path))}
        if getattr(event, "dest_path", None):
            paths.add(os.path.realpath(os.fsdecode(event.dest_path)))
        if not paths & self.files and not any(fnmatch.fnmatch(path, pattern) for path in paths
                                               for pattern in self.patterns):
            return
        immediate = event.event_type in ("closed", "moved", "created", "deleted")
        self.loop.call_soon_threadsafe(lambda: self._changed(immediate, event.event_type))

    def _changed(self, immediate: bool, kind: str) -> None:
        if self._debounce is not None:
            self._debounce.cancel()
            self._debounce = None
        if immediate:
            self.on_change(f"file {kind}")
        else:
            self._debounce = self.loop.call_later(DEBOUNCE, lambda: self.on_change("file modified"))
