"""`orch logs -f`: an instance log's tail, then what is appended, across rotations."""

from __future__ import annotations

import os
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: 3-6 ms of every `orch` call
if TYPE_CHECKING:
    from typing import Any


class LogFollower:
    """One instance log for `orch logs`: its tail, then (with -f) whatever is appended, across
    rotations: the rotated-away file is read to its end before the new one is started, and a
    line is printed only once its newline has arrived."""

    def __init__(self, path: Path, label: str | None):
        self.path = path
        self.label = label
        self.handle: Any = None
        self.inode: int | None = None
        self.pending = b""
        self._open()

    def _open(self) -> bool:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return False
        self.handle = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        return True

    def _print(self, lines: list[bytes]) -> None:
        for raw in lines:
            line = raw.decode(errors="replace")
            print(f"{self.label} | {line}" if self.label else line)

    def _end(self, count: int) -> bytes:
        """Enough of the file's end for `count` lines, read backwards in growing blocks (a
        50 MiB log is not read whole); leaves the handle at the end, for following."""
        size = os.fstat(self.handle.fileno()).st_size
        block = 64 * 1024
        while True:
            start = max(0, size - block)
            self.handle.seek(start)
            data = self.handle.read(size - start)
            if start == 0 or data.count(b"\n") > count:
                break
            block *= 4
        return data if start == 0 else data[data.index(b"\n") + 1:]  # drop the cut first line

    def tail(self, count: int, keep_partial: bool) -> None:
        data = self._end(max(count, 0)) if self.handle is not None else b""
        lines = data.split(b"\n")
        last = lines.pop()  # b"" after a final newline, else a line still being written
        if last and not keep_partial:
            lines.append(last)
        elif last:
            self.pending = last
        self._print(lines[-count:] if count > 0 else [])

    def poll(self) -> None:
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = None  # renamed away, not recreated yet: the old file may still grow
        data = self.handle.read() if self.handle is not None else b""
        if current is not None and current != self.inode:
            # Rotated: the master no longer writes to the old file, so what was just read
            # was its end. Continue at the start of the new one.
            if self.handle is not None:
                self.handle.close()
                self.handle = None
            if self._open():
                data += self.handle.read()
        elif self.handle is not None and os.fstat(self.handle.fileno()).st_size < self.handle.tell():
            self.handle.seek(0)  # truncated in place
            data += self.handle.read()
        if not data:
            return
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        self._print(lines)
