"""`SpawnRequest`: what the master asks the spawner to start (both sides of the protocol
import it; the spawner process itself lives in helper.py). A NamedTuple, not a dataclass:
dataclasses pulls in inspect and ast, a fifth of what the spawner imports."""

from __future__ import annotations

from typing import NamedTuple


class SpawnRequest(NamedTuple):
    """One process to start. `env` is the full environment, or overrides on the inherited one."""

    token: int
    argv: tuple[str, ...]
    env: dict[str, str]
    inherit_env: bool
    cwd: str
    preload: tuple[str, tuple[str, ...]] | None = None  # (target, pythonpath): fork from a zygote
    sockets: tuple[tuple[str, str], ...] = ()  # (name, key) of held sockets, for fds 3, 4, ...
