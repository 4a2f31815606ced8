"""`user`, `group`, `groups`: who an instance runs as, resolved at expansion against this
host's user database, so that a user that does not exist, or one a master that is not root
cannot become, is a located config error and never a spawn that fails.

The uid, gid and group ids are part of the instance's identity: a user recreated with
another uid restarts its instances at the next reload.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunAs:
    """The credentials a child takes before exec, and its passwd entry's HOME and SHELL.
    `user` is None when only `group`/`groups` were given (the master's own user)."""

    user: str | None
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    def env(self) -> dict[str, str]:
        """HOME, USER, LOGNAME and SHELL from the passwd entry (`env` and env files win)."""
        if self.user is None:
            return {}
        return {"HOME": self.home, "USER": self.user, "LOGNAME": self.user, "SHELL": self.shell}


def _user(text: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except (KeyError, OverflowError):
        raise ValueError(f"no user {text!r} on this host") from None


def _gid(text: str) -> int:
    if text.isdigit():
        return int(text)  # a bare gid needs no group entry, as with setgid(1)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no group {text!r} on this host") from None


def resolve(user: str | None, group: str | None, groups: tuple[str, ...] | None,
            cache: dict[tuple, RunAs] | None = None) -> RunAs | None:
    """The RunAs for these rendered values, None when none is set; ValueError (with the key
    at fault first, "user: ..." / "group: ..." / "groups: ...") when the host has no such user
    or group, or when this master, not being root, could not take them on."""
    if user is None and group is None and groups is None:
        return None
    key = (user, group, groups)
    if cache is not None and key in cache:
        return cache[key]
    try:
        entry = _user(user) if user is not None else pwd.getpwuid(os.geteuid())
    except ValueError as exc:
        raise ValueError(f"user: {exc}") from None
    try:
        gid = _gid(group) if group is not None else entry.pw_gid
    except ValueError as exc:
        raise ValueError(f"group: {exc}") from None
    try:
        extra = (tuple(sorted({_gid(g) for g in groups})) if groups is not None
                 else tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)))))
    except ValueError as exc:
        raise ValueError(f"groups: {exc}") from None
    found = RunAs(entry.pw_name if user is not None else None, entry.pw_uid, gid, extra,
                  entry.pw_dir, entry.pw_shell or "/bin/sh")
    _check_allowed(found, user, group, groups)
    if cache is not None:
        cache[key] = found
    return found


def _check_allowed(found: RunAs, user: str | None, group: str | None, groups: tuple[str, ...] | None) -> None:
    """A master that is not root can start processes only as itself, with its own groups."""
    if os.geteuid() == 0:
        return
    me = os.geteuid()
    if found.uid != me:
        raise ValueError(f"user: orch runs as uid {me}, not root, and cannot start processes as "
                         f"{user!r} (uid {found.uid}); run the master as root or leave out user")
    if group is not None and found.gid != os.getegid():
        raise ValueError(f"group: orch runs as uid {me}, not root, and cannot take group {group!r}")
    if groups is not None and set(found.groups) != set(os.getgroups()):
        raise ValueError(f"groups: orch runs as uid {me}, not root, and cannot change its supplementary groups")


def needs_switch(run_as: RunAs | None) -> bool:
    """Whether a child must change credentials (a master that is not root never does: the
    checks above allowed only its own)."""
    return run_as is not None and os.geteuid() == 0


READ, EXECUTE = 4, 1


def _allowed(st: os.stat_result, run_as: RunAs, bits: int) -> bool:
    """Whether the mode bits give `run_as` these rights (the kernel's order: owner, then
    group, then other; POSIX ACLs are not read)."""
    if run_as.uid == 0:
        return bits != EXECUTE or bool(st.st_mode & 0o111)
    shift = 6 if st.st_uid == run_as.uid else 3 if st.st_gid == run_as.gid or st.st_gid in run_as.groups else 0
    return (st.st_mode >> shift) & bits == bits


def _describe(path: str, st: os.stat_result) -> str:
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    return f"{path} (mode {st.st_mode & 0o7777:04o}, owner {owner})"


def access_problem(run_as: RunAs, path: str, bits: int) -> str | None:
    """Why `run_as` cannot reach `path` and read or execute it (`bits`), or None; a path
    that is not there is left to other checks. Both the path as written and where its links
    lead are walked, as exec walks them."""
    try:
        for candidate in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
            for folder in reversed(Path(candidate).parents):
                st = os.stat(folder)
                if not _allowed(st, run_as, EXECUTE):
                    return f"{_describe(str(folder), st)} is not searchable by it"
        st = os.stat(path)
    except OSError:
        return None
    if not _allowed(st, run_as, bits):
        return f"{_describe(os.path.realpath(path), st)} is not {'executable' if bits & EXECUTE else 'readable'} by it"
    return None


def program_problem(run_as: RunAs, program: str) -> str | None:
    """Why `run_as` cannot run `program` (an absolute path), or its `#!` interpreter, or None."""
    why = access_problem(run_as, program, EXECUTE)
    if why is not None:
        return f"cannot execute {program}: {why}"
    try:
        with open(program, "rb") as file:
            head = file.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!") or not head[2:].split():
        return None
    interpreter = os.fsdecode(head[2:].split()[0])
    why = access_problem(run_as, program, READ)  # the interpreter opens the script as the user
    if why is None:
        why = access_problem(run_as, interpreter, EXECUTE)
        return None if why is None else f"cannot execute {interpreter}, the interpreter of {program}: {why}"
    return f"cannot read the script {program}: {why}"
