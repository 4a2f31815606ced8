"""The pidfile, locked for the master's whole life: one master per config, and the lock is
taken before anything else happens, so a second `orch up` can never harm the first fleet.
Also `open_own_file`, how the master opens the files of its own folders (pidfile, master.log)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from ..errors import ConfigError, ConfigProblem, OrchError

# O_NOFOLLOW: a link at the last component is refused, never written through. O_NONBLOCK:
# a FIFO planted there cannot hang the master in open() (it has no effect on plain files).
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_own_file(path: Path, flags: int, mode: int) -> int:
    """An fd for `path` if it is (or is created as) a plain file with one name; a symlink,
    FIFO, device or second hard link there is a config error (exit 2) naming it, since
    whoever put it there could aim the master's truncations and writes at any file."""
    try:
        fd = os.open(path, flags | _SAFE, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused(path, "is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refused(path, "is not a plain file")
        if info.st_nlink != 1:
            raise _refused(path, f"has {info.st_nlink} hard links")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refused(path: Path, what: str) -> ConfigError:
    return ConfigError([ConfigProblem(str(path), "", f"{what}; orch writes its own files only "
                                      "directly: remove it and start again")])


class PidLock:
    """The pidfile, locked for the master's whole life: one master per config."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def acquire(self) -> "PidLock":
        """Lock and write our pid; up.py has already made sure the folder is the master's own."""
        self.fd = open_own_file(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            raise OrchError(f"another orch master (pid {other or '?'}) is already running "
                            f"for this config (pidfile {self.path} is locked)") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def release(self) -> None:
        if self.fd >= 0:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


def folder_problem(folder: Path) -> str | None:
    """Why `folder` (created 0750 if missing) is not safe for the master's files, or None.
    Owned by this user or root (who can do anything anyway), and writable by its owner only:
    a link planted there would aim the pidfile's truncation or a log's appends at any file,
    and a state file put there would make this master SIGKILL the pids it names."""
    try:
        _make_private(folder)
        info = os.stat(folder)  # a link to a folder is fine: what counts is who can write there
    except OSError as exc:
        return f"cannot be used: {exc.strerror}"
    me = os.geteuid()
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if info.st_uid not in (me, 0):
        return (f"is owned by uid {info.st_uid}, not by this master's user (uid {me}); "
                "use a folder only this user can write")
    if info.st_mode & 0o022:
        return (f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}), who could "
                "plant links in it; chmod go-w it or use a folder only this user can write")
    return None


def _make_private(folder: Path) -> None:
    """mkdir -p with 0750 for every folder it creates (Path.mkdir gives the parents it makes
    the umask's default, group-writable under umask 002)."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o750)
        except FileExistsError:
            pass  # made at the same moment by another `orch up`: checked like any other
