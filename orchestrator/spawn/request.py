"""`SpawnRequest`: what the master asks the spawner to start (both sides of the protocol
import it; the spawner process itself lives in helper.py). A NamedTuple, not a dataclass:
dataclasses pulls in inspect and ast, a fifth of what the spawner imports."""

from __future__ import annotations

from typing import NamedTuple

# Bump when a message between the master and the spawner changes. With SpawnRequest's fields
# it is the protocol an `orch upgrade` checks: the new master talks to the running spawner.
PROTOCOL = 1
# The core every revision keeps as it is, so that a master whose PROTOCOL differs can still
# retire a spawner of an older orch beside its own (handover/beside.py): from the master
# ("signal", [(pid, signum, whole tree?)]), ("close_sockets", [key]) and ("exit",); from the
# spawner ("exited", [(pid, wait status)]), ("adopted" | "released", [(leader, orphan)]),
# ("strays", [(pid, command)]) and EOF; pickled tuples of ints and strings. Bump CORE (and
# PROTOCOL) only with a change to these: an upgrade across it is refused (restart the master).
CORE = 1


class SpawnRequest(NamedTuple):
    """One process to start. `env` is the full environment, or overrides on the inherited one."""

    token: int
    argv: tuple[str, ...]
    env: dict[str, str]
    inherit_env: bool
    cwd: str
    preload: tuple[str, tuple[str, ...]] | None = None  # (target, pythonpath): fork from a zygote
    sockets: tuple[tuple[str, str], ...] = ()  # (name, key) of held sockets, for fds 3, 4, ...
    setup: tuple | None = None  # identity.Setup: limits, umask, user (forces the fork path)
    stderr: str = "merge"  # merge | separate (a second fd follows the output's) | discard
    cgroup: tuple | None = None  # cgroups.Join: the child joins its cgroups first (forces the fork path)


def fd_count(request: SpawnRequest) -> int:
    """How many fds travel with the request: its output, and its stderr when separate."""
    return 2 if request.stderr == "separate" else 1


def with_outputs(requests: list[SpawnRequest], fds: list[int], devnull: int) -> list[tuple[SpawnRequest, int, int]]:
    """(request, stdout fd, stderr fd) of a message: a separate stderr's fd follows its
    output's in `fds`; a discarded stderr is `devnull`; a merged one is the output."""
    found, at = [], 0
    for request in requests:
        out = fds[at]
        err = fds[at + 1] if fd_count(request) == 2 else devnull if request.stderr == "discard" else out
        at += fd_count(request)
        found.append((request, out, err))
    return found
