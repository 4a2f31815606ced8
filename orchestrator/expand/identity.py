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
