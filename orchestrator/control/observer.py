"""The config's folders watched by watchdog's observer (inotify on Linux), its events handed
to the master's loop.

watchdog reads inotify in its own threads; the only thing those threads do here is pass
each relevant event to the loop through `EventLoop.call_soon_threadsafe`, the loop's one
thread-safe entry. Everything else (classifying a save, timers, reloads) runs on the loop
thread. Events are named the way `saves.classify` takes them: "created", "modified",
"closed" (closed after writing), "deleted", and "moved" with its source and destination.
A rename *into* a watched folder from elsewhere has no pair: it is "moved" with an empty
source (the file is whole the moment it appears); a rename *out* of them is "deleted".
When the kernel's queue overflows, OVERFLOW is reported: events were lost.

Cost, measured in the master at idle (bench/RESULTS.md): three threads for one watched
folder (the inotify reader, one emitter per folder, the dispatcher), all blocked in reads,
and about 1.6 MiB of RSS for the import and the threads' stacks.
"""

from __future__ import annotations

import os
from typing import Callable

from watchdog.events import (DirDeletedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyFullEmitter, InotifyObserver, InotifyWatchGroup

from ..loop import EventLoop

OVERFLOW = "overflow"  # the kind reported when the kernel's queue overflowed
FOLDER_GONE = "folder gone"  # a watched folder itself was deleted: its watch ended with it
Event = tuple[str, str, "str | None"]


class _Overflowed(FileSystemEvent):
    """What the emitter queues when inotify's queue overflowed (watchdog itself only logs it)."""

    event_type = OVERFLOW


class _Group(InotifyWatchGroup):
    """watchdog's watch group (what inotify's overflow reaches), telling its emitter too."""

    overflowed: Callable[[], None] | None = None  # a plain attribute: _Group is no dataclass

    def on_queue_overflow(self) -> None:
        super().on_queue_overflow()
        if self.overflowed is not None:
            self.overflowed()


class _Emitter(InotifyFullEmitter):
    """watchdog's inotify emitter reporting unmatched renames (the "full" one), and overflows:
    watchdog only logs those, and a save lost in one would never be applied. It replaces
    InotifyEmitter.on_thread_start to make its group a _Group (watchdog 7's internals:
    pyproject pins the major version, tests/test_observer.py overflows a real queue)."""

    def on_thread_start(self) -> None:
        group = _Group(self._inotify_fd, os.fsencode(self.watch.path), is_recursive=self.watch.is_recursive,
                       event_mask=self.get_event_mask_from_filter(), follow_symlink=self.watch.follow_symlink)
        group.overflowed = lambda: self.queue_event(_Overflowed(self.watch.path))
        self._inotify = group


class _Observer(InotifyObserver):
    def __init__(self) -> None:
        super().__init__(generate_full_events=True)
        self._emitter_class = _Emitter


def translate(event: FileSystemEvent) -> Event | None:
    """One watchdog event as (kind, source, destination); None for what a save never is
    (folders, opens, attribute changes) (pure)."""
    if isinstance(event, _Overflowed):
        return OVERFLOW, "", None
    if isinstance(event, DirDeletedEvent):
        return FOLDER_GONE, os.fsdecode(event.src_path), None
    if event.is_directory:
        return None
    src, dest = os.fsdecode(event.src_path), os.fsdecode(event.dest_path or "")
    if isinstance(event, FileMovedEvent):
        if not dest:
            return "deleted", src, None  # renamed out of the watched folders
        return "moved", src, dest
    for kind, cls in (("closed", FileClosedEvent), ("created", FileCreatedEvent),
                      ("deleted", FileDeletedEvent), ("modified", FileModifiedEvent)):
        if isinstance(event, cls):
            return kind, src, None
    return None


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: filters, then hands the event to the loop."""

    def __init__(self, loop: EventLoop, wanted: Callable[[Event], bool],
                 on_event: Callable[[str, str, str | None], None]) -> None:
        self.loop, self.wanted, self.on_event = loop, wanted, on_event

    def dispatch(self, event: FileSystemEvent) -> None:
        found = translate(event)
        if found is not None and (found[0] == FOLDER_GONE or self.wanted(found)):
            self.loop.call_soon_threadsafe(lambda: self.on_event(*found))


class FolderWatch:
    """Folders watched by one watchdog observer; `on_event(kind, src, dest)` runs in the loop
    for each event `wanted` lets through (it runs on the observer's thread, so it may only
    read state the loop replaces whole, never mutates)."""

    def __init__(self, loop: EventLoop, on_event: Callable[[str, str, str | None], None],
                 wanted: Callable[[Event], bool] = lambda event: True, recursive: bool = False) -> None:
        self.on_event = on_event
        self.recursive = recursive  # each folder with every folder below it (code_watch's globs)
        self._handler = _Handler(loop, wanted, self._event)
        self._observer: _Observer | None = None
        self._watches: dict[str, ObservedWatch | None] = {}  # None: scheduled once started

    def _event(self, kind: str, src: str, dest: str | None) -> None:
        if kind == FOLDER_GONE:
            if src in self._watches:  # its emitter stopped: forget it, so it can be watched anew
                self.remove(src)
            return
        self.on_event(kind, src, dest)

    @property
    def folders(self) -> set[str]:
        return set(self._watches)

    def start(self) -> None:
        if self._observer is None:
            self._observer = _Observer()
            self._observer.daemon = True
            self._observer.start()
            for folder in list(self._watches):
                self._watches[folder] = self._schedule(folder)

    def _schedule(self, folder: str) -> ObservedWatch:
        assert self._observer is not None
        # follow_symlink: a folder reached through a symlink (a ConfigMap's) is watched where it leads
        return self._observer.schedule(self._handler, folder, recursive=self.recursive, follow_symlink=True)

    def add(self, folder: str) -> None:
        """Watch `folder` (OSError if it cannot be)."""
        if folder in self._watches:
            return
        if not os.path.isdir(folder):
            raise FileNotFoundError(folder)
        self._watches[folder] = self._schedule(folder) if self._observer is not None else None

    def remove(self, folder: str) -> None:
        watch = self._watches.pop(folder, None)
        if watch is not None and self._observer is not None:
            try:
                self._observer.unschedule(watch)
            except (KeyError, OSError):
                pass  # the folder went away: watchdog dropped its watch already

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(5)
        self._watches.clear()
