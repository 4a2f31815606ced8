"""Per-instance log files with size rotation, and the foreground echo of children's output."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
import sys
import zlib
from pathlib import Path
from typing import Callable, TextIO
from urllib.parse import unquote

from ..procfs import kept_fd_ceiling

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")
_MAX_STEM = 200  # NAME_MAX is 255 bytes; leave room for ".log.<backup number>"
_COLOURS = ("36", "33", "32", "35", "34", "91", "92", "93", "94", "95", "96")
# Never through a link at the last component; O_NONBLOCK: a FIFO without a reader fails
# the open (ENXIO) instead of hanging the master (no effect on plain files).
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
log = logging.getLogger("orch")


def log_path(log_dir: Path, name: str) -> Path:
    """`<log_dir>/<name>.log`, the name made file-safe.

    Unsafe characters become `%XX` escapes (of their UTF-8 bytes), so two names never share a
    file (`a:b` and `a_b` did, when both became `a_b`) and `instance_name()` can map a file back
    to its instance. A name too long for a file name keeps its start plus a hash of the whole."""
    safe = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass")),
                       name)
    if len(safe) > _MAX_STEM:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = safe[:_MAX_STEM - 17] + "~" + digest
    if safe.endswith(STDERR_SUFFIX):  # never the stderr log of another instance (`x` and `x.stderr`)
        safe = safe[:-len(STDERR_SUFFIX)] + "%2E" + STDERR_SUFFIX[1:]
    return log_dir / (safe + ".log")


STDERR_SUFFIX = ".stderr"


def stderr_path(path: Path) -> Path:
    """Where `stderr = "separate"` writes: `<name>.stderr.log` beside `<name>.log`."""
    return path.with_name(path.name[:-4] + STDERR_SUFFIX + ".log")


def is_stderr_log(path: Path) -> bool:
    return path.name.endswith(STDERR_SUFFIX + ".log")


def open_log(path: Path) -> tuple[int, int]:
    """(fd appending to `path`, its size), `path` being a plain file with one name.

    A symlink, FIFO or second hard link found there is removed (never its target: unlink acts
    on the link) and a fresh file made: a worker's output lands where `orch logs` reads it and
    nowhere else, and a log opened at any time (first output, a reload) never stops the master."""
    try:
        fd = os.open(path, _APPEND | os.O_CREAT, 0o640)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):  # ENXIO: a FIFO with no reader
            raise
    else:
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            return fd, info.st_size
        os.close(fd)
    log.warning("log file %s was a link or not a plain file: replaced by a new file, what it "
                "pointed at left untouched", path)
    path.unlink()
    return os.open(path, _APPEND | os.O_CREAT | os.O_EXCL, 0o640), 0


def instance_name(path: Path) -> str:
    """The instance name a `log_path()` or `stderr_path()` file belongs to (its stem when the
    name was hashed)."""
    stem = path.name[:-4] if path.name.endswith(".log") else path.name
    stem = stem[:-len(STDERR_SUFFIX)] if stem.endswith(STDERR_SUFFIX) else stem
    return stem if "~" in stem else unquote(stem, errors="surrogatepass")


class LogFile:
    """An append-only file rotated by size: name.log -> name.log.1 -> ... -> name.log.N."""

    __slots__ = ("path", "max_size", "backups", "_fd", "_size", "_keep", "_err", "_mid_line")  # one per instance

    def __init__(self, path: Path, max_size: int, backups: int):
        self.path = path
        self.max_size = max_size
        self.backups = backups
        self._fd = -1
        self._size = 0
        self._keep = True  # False: the fd came from the last free ones; closed after each write
        self._err: LogFile | None = None  # the stderr log, with stderr = "separate"
        self._mid_line = False  # the last write did not end with a newline
        # Opened on the first write: most workers print nothing at start, and 500 eager
        # opens are most of the master's own cost of starting 500 instances.

    def open(self) -> None:
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)  # removed while running
        self._fd, self._size = open_log(self.path)
        # A fleet of chatty workers would otherwise hold an fd each for good, and once the
        # table is full a write is lost: past the ceiling the kept /proc fds also respect,
        # a log file is opened for each write and closed after it.
        self._keep = self._fd < kept_fd_ceiling()

    def reopen(self) -> None:
        """For external logrotate (SIGUSR1): close; the next write opens the path again."""
        self.close()

    def move(self, path: Path) -> None:
        """Write to `path` from the next write on (orchestrator.log_dir changed); the stderr
        log beside it moves too. What was written stays where it is."""
        self.close()
        self.path = path
        if self._err is not None:
            self._err.move(stderr_path(path))

    def errors(self) -> "LogFile":
        """The stderr log beside this one (`stderr = "separate"`), rotated by the same
        sizes; closed and reopened with this one."""
        if self._err is None:
            self._err = LogFile(stderr_path(self.path), self.max_size, self.backups)
        self._err.max_size, self._err.backups = self.max_size, self.backups
        return self._err

    def write(self, data: bytes) -> None:
        """Append a chunk of output, rotating when it would pass `max_size`: the whole lines
        that still fit go to the old file, the rest to the fresh one, so a line is never cut
        across two files (a file stopped mid-line takes the rest of that line first, passing
        `max_size` by at most that)."""
        if self._fd < 0:
            try:
                self.open()
            except OSError:
                return
        if self.max_size and self._size + len(data) > self.max_size and self._size > 0:
            self._size = self._real_size()  # truncated from outside (logrotate copytruncate)?
        if self.max_size and self._size + len(data) > self.max_size and self._size > 0:
            cut = data.rfind(b"\n", 0, max(0, self.max_size - self._size)) + 1
            if not cut and self._mid_line:
                cut = data.find(b"\n") + 1
            if cut:
                self._append(data[:cut])
                data = data[cut:]
            try:
                self.rotate()
                self.open()  # rotate() closed the file: the rest goes to the fresh one
            except OSError:
                return
            if not data:
                return
        self._append(data)

    def _append(self, data: bytes) -> None:
        self._mid_line = not data.endswith(b"\n")
        try:
            os.write(self._fd, data)
        except OSError:
            return  # a full disk must not take the master down
        finally:
            if not self._keep:
                self.close()
        self._size += len(data)

    def _real_size(self) -> int:
        """The file's size now: only asked when the count says a rotation is due, so an
        outside truncation restarts the count instead of rotating a nearly empty file."""
        try:
            return os.fstat(self._fd).st_size
        except OSError:
            return self._size

    def rotate(self) -> None:
        self.close()
        if self.backups > 0:
            # rename(2) moves or replaces a link itself, never what it points at; no
            # exists() first, which would follow one.
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                try:
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
                except FileNotFoundError:
                    pass  # fewer backups than that yet
            try:
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            except FileNotFoundError:
                pass  # renamed away by someone else (logrotate before its SIGUSR1)
        else:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._err is not None:
            self._err.close()


class Echo:
    """Children's output on the master's stdout, one prefixed line at a time (like foreman)."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None):
        self.stream = stream or sys.stdout
        if colour is None:
            colour = self.stream.isatty() and not os.environ.get("NO_COLOR")
        self.colour = colour
        self.width = 12

    def prefixer(self, name: str) -> Callable[..., None]:
        """A writer for one instance; keeps a partial last line until its newline arrives.
        `write(data, True)` is a separate stderr's: its lines say `[stderr]` after the name."""
        self.width = max(self.width, min(len(name), 40))
        colour = _COLOURS[zlib.crc32(name.encode()) % len(_COLOURS)]  # the same colour every run
        pendings = (bytearray(), bytearray())
        buffer = self.stream.buffer if hasattr(self.stream, "buffer") else None

        def write(data: bytes, stderr: bool = False) -> None:
            pending = pendings[stderr]
            pending.extend(data)
            if b"\n" not in pending:
                if len(pending) < 65536:
                    return
                pending.extend(b"\n")
            cut = pending.rindex(b"\n") + 1
            lines, rest = bytes(pending[:cut]), bytes(pending[cut:])
            pending[:] = rest
            label = name.ljust(self.width)
            prefix = f"\x1b[{colour}m{label} |\x1b[0m " if self.colour else f"{label} | "
            if stderr:
                prefix += "[stderr] "
            text = "".join(prefix + line + "\n" for line in
                           lines.decode(errors="replace").splitlines())
            try:
                if buffer is not None:
                    buffer.write(text.encode())
                    buffer.flush()
                else:
                    self.stream.write(text)
                    self.stream.flush()
            except (OSError, ValueError):
                pass
        return write
