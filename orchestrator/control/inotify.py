"""inotify on folders, read in the master's event loop: no thread, no extra library.

What the config watcher needs from the kernel is the events of a few folders, named the way
`saves.classify` takes them: "created", "modified", "closed" (closed after writing),
"deleted", and "moved" with its source and destination. A rename inside the watched folders
arrives as an IN_MOVED_FROM and IN_MOVED_TO pair with one cookie, and is reported as one
"moved". A rename *into* a watched folder from elsewhere has no pair: it is reported as
"moved" with an empty source, since the file is whole the moment it is renamed in. A rename
*out* of them is reported as "deleted". Folder events and attribute changes are dropped.

Linux only, as the rest of the master (/proc, prctl).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Callable, Iterator

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

FOLDER_EVENTS = (IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
                 | IN_DELETE_SELF | IN_MOVE_SELF)
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of NUL-padded name
OVERFLOW = "overflow"  # the kind reported when the kernel's queue overflowed: events were lost

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)
    return result


class FolderWatch:
    """An inotify fd watching folders; `read()` turns what is pending into
    (kind, source path, destination path or None) for `on_event`."""

    def __init__(self, on_event: Callable[[str, str, str | None], None]) -> None:
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self.on_event = on_event
        self._folders: dict[int, set[str]] = {}  # watch descriptor -> folders (one inode, several names)
        self._wds: dict[str, int] = {}

    def add(self, folder: str) -> None:
        wd = _check(_libc.inotify_add_watch(self.fd, os.fsencode(folder), FOLDER_EVENTS | IN_ONLYDIR),
                    "inotify_add_watch", folder)
        self._wds[folder] = wd
        self._folders.setdefault(wd, set()).add(folder)

    def remove(self, folder: str) -> None:
        wd = self._wds.pop(folder, None)
        if wd is None:
            return
        names = self._folders.get(wd, set())
        names.discard(folder)
        if not names:  # the last name for that inode: the kernel watch can go
            self._folders.pop(wd, None)
            if _libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
                _check(-1, "inotify_rm_watch", folder)  # EINVAL: the kernel dropped it already

    @property
    def folders(self) -> set[str]:
        return set(self._wds)

    def close(self) -> None:
        os.close(self.fd)
        self._folders.clear()
        self._wds.clear()

    def read(self) -> None:
        """Read and report every pending event (call when the fd is readable)."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for event in self._events(data):
                self.on_event(*event)

    def _events(self, data: bytes) -> Iterator[tuple[str, str, str | None]]:
        moves: dict[int, str] = {}  # cookie -> source of a rename whose other half is pending
        for wd, mask, cookie, name in _parse(data):
            if mask & IN_Q_OVERFLOW:
                yield OVERFLOW, "", None
                continue
            if mask & IN_IGNORED:  # the folder itself is gone: its names no longer map here
                for folder in self._folders.pop(wd, ()):
                    self._wds.pop(folder, None)
                continue
            if mask & IN_ISDIR or not name:
                continue
            for folder in sorted(self._folders.get(wd, ())):
                path = os.path.normpath(os.path.join(folder, name))
                if mask & IN_MOVED_FROM:
                    moves[cookie] = path
                elif mask & IN_MOVED_TO:
                    yield "moved", moves.pop(cookie, ""), path
                elif mask & IN_CLOSE_WRITE:
                    yield "closed", path, None
                elif mask & IN_CREATE:
                    yield "created", path, None
                elif mask & IN_DELETE:
                    yield "deleted", path, None
                elif mask & IN_MODIFY:
                    yield "modified", path, None
        for source in moves.values():  # renamed to somewhere not watched
            yield "deleted", source, None


def _parse(data: bytes) -> Iterator[tuple[int, int, int, str]]:
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        name = data[offset:offset + length].rstrip(b"\0")
        offset += length
        yield wd, mask, cookie, os.fsdecode(name)
