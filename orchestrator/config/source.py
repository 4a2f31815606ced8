"""Reading a config file or an included one: only regular files, and only up to a size.

An include of /dev/zero, a FIFO nobody writes or a 5 GiB log matched by a glob would hang
or exhaust `orch check` and a live master's reload; each is refused with a reason instead.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import stat
from typing import Iterable, Iterator

# The largest file orch reads: 5,000 templates are about 300 KB. A 1 MiB file of 16,000
# three-line templates took 2.7 s to parse, validate and expand here (the worst case
# `orch check` and a save meet), half that at this size; bigger fleets split into
# included files, each under this size.
MAX_FILE_BYTES = 512 << 10


class SourceError(OSError):
    """A config source orch will not read; str() says why in one line."""

    def __str__(self) -> str:
        return str(self.args[0])


# Sources read from here instead of the disk: the config an upgraded master's predecessor
# had applied, while a save of it waits to be reloaded (handover/); empty otherwise.
_OVERLAY: dict[str, bytes] = {}


@contextlib.contextmanager
def overlay(sources: dict[str, bytes] | None) -> Iterator[None]:
    """Read these files' bytes instead of the disk's while in the block (None: the disk's)."""
    _OVERLAY.update(sources or {})
    try:
        yield
    finally:
        _OVERLAY.clear()


def read_source(path: os.PathLike | str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else SourceError (OSError on
    the usual failures: missing, unreadable). Never blocks on a FIFO or device."""
    if _OVERLAY and os.fspath(path) in _OVERLAY:
        return _OVERLAY[os.fspath(path)]
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > limit:
            raise SourceError(f"the file is {info.st_size:,} bytes; orch reads config files of up to {limit:,}")
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise SourceError(f"the file grew past {limit:,} bytes while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def source_files(files: Iterable[os.PathLike | str], patterns: Iterable[str]) -> list[str]:
    """The config, its included files, and whatever matches an include glob now (a new one)."""
    found = {os.fspath(f) for f in files}
    for pattern in patterns:
        found.update(glob.glob(pattern))
    return sorted(found)


def sources_digest(files: Iterable[os.PathLike | str], patterns: Iterable[str] = ()) -> str | None:
    """A digest of every source's name and content; None while one cannot be read (missing)."""
    return digest_of(read_sources(files, patterns))


def read_sources(files: Iterable[os.PathLike | str], patterns: Iterable[str] = ()) -> dict[str, bytes] | None:
    """Every source's bytes by name; None while one cannot be read (missing)."""
    try:
        return {name: read_source(name) for name in source_files(files, patterns)}
    except OSError:
        return None


def digest_of(sources: dict[str, bytes] | None) -> str | None:
    """The digest `sources_digest` gives for these bytes."""
    if sources is None:
        return None
    digest = hashlib.sha256()
    for name, content in sources.items():
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()
