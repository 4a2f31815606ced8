"""What a child takes on before exec when its template asks (issue 26): resource limits,
umask, and another user's supplementary groups, group and user, in that order.

`Setup` travels in a `SpawnRequest`: plain numbers, resolved by the master at expansion
(`expand/identity.py`), so nothing here looks a name up between fork and exec. A request
with a Setup takes the fork path (posix_spawn has no attribute for any of these); a
preloaded one gets a zygote of its own that takes it on before importing the target,
so that user code never runs as root and the zygote's workers inherit all of it.
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Any, Callable, NamedTuple

from .cgroups import join
from .child import PR_SET_PDEATHSIG, prctl

PR_SET_DUMPABLE = 4


class Setup(NamedTuple):
    """uid, gid and groups (None: keep the master's), umask (None: keep), rlimits as
    (RLIMIT_* number, soft, hard)."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...] | None
    umask: int | None
    rlimits: tuple[tuple[int, int, int], ...]


def apply_setup(setup: Setup, parent: int) -> None:  # pragma: no cover - in children
    """Take `setup` on, in a just-forked child of `parent`. Limits first (a hard limit can
    be raised only while still root), then setgroups, setgid, setuid: os.setuid as root
    sets the real, effective, saved and filesystem uids at once, so nothing can be regained.
    Changing credentials clears PR_SET_PDEATHSIG and the dumpable flag: both are set again
    (a zygote never execs, which would have reset dumpable; without it the worker could not
    read its own /proc entries)."""
    for number, soft, hard in setup.rlimits:
        _step(f"setrlimit {number}", resource.setrlimit, number, (soft, hard))
    if setup.umask is not None:
        os.umask(setup.umask)
    if setup.uid is None:
        return
    _step("setgroups", os.setgroups, list(setup.groups or ()))
    _step(f"setgid {setup.gid}", os.setgid, setup.gid if setup.gid is not None else os.getgid())
    _step(f"setuid {setup.uid}", os.setuid, setup.uid)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died while PDEATHSIG was cleared
        os._exit(1)
    prctl(PR_SET_DUMPABLE, 1)


def joining(cgroup: Any, then: Callable[[], None] | None) -> Callable[[], None] | None:
    """`then` (apply_setup), preceded by joining the request's cgroups (cgroups.Join) while
    still root: nothing has forked yet, and nothing the child runs can leave them."""
    if cgroup is None:
        return then

    def join_then() -> None:  # pragma: no cover - in children
        _step("joining its cgroup", join, cgroup)
        if then is not None:
            then()
    return join_then


def _step(what: str, call: Any, *args: Any) -> None:  # pragma: no cover - in children
    """One call; its failure says which step failed (the spawner reports it as the exec error)."""
    try:
        call(*args)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {exc.strerror}") from None
