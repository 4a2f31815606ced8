"""`[sockets.NAME]` tables: listening sockets the master binds once and passes on (pure).

A socket's `address` is its canonical form (an absolute path for `unix:`), so the same
address written two ways is recognised as one, and a change of address is a new socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .keys import SOCKET_KEYS
from .locate import Problems

DEFAULT_BACKLOG = 1024
DEFAULT_UNIX_MODE = 0o600  # owner-only unless the config widens it, like the control socket
DEFAULT_RESET_AFTER = 10.0


@dataclass(frozen=True)
class SocketDecl:
    """One validated `[sockets.NAME]` table."""

    name: str
    address: str          # "127.0.0.1:8000", "[::1]:8000", "unix:/absolute/path" or "unix:@abstract"
    backlog: int = DEFAULT_BACKLOG
    mode: int = DEFAULT_UNIX_MODE
    reset_after: float = DEFAULT_RESET_AFTER  # supervise/unserved.py

    @property
    def key(self) -> str:
        """What identifies this socket across reloads: its name and address."""
        return f"{self.name}={self.address}"

    @property
    def unix_path(self) -> str | None:
        """The file of a `unix:` socket (None for TCP and for the abstract namespace)."""
        return self.address[5:] if self.address.startswith("unix:") and not self.abstract else None

    @property
    def abstract(self) -> bool:
        """`unix:@name`: Linux's abstract namespace, no file, gone with its last holder."""
        return self.address.startswith("unix:@")


def parse_sockets(table: object, folder: Path, problems: Problems) -> tuple[SocketDecl, ...]:
    """Every valid `[sockets.*]` table; problems are added for the rest."""
    if not isinstance(table, dict):
        problems.add("sockets", "expected tables like [sockets.web] with bind = \"127.0.0.1:8000\"")
        return ()
    found: list[SocketDecl] = []
    owners: dict[str, str] = {}
    for name, body in table.items():
        decl = _socket(name, body, folder, problems)
        if decl is None:
            continue
        if decl.address in owners:
            problems.add(f"sockets.{name}.bind", f"{decl.address} is also bound by sockets.{owners[decl.address]}")
            continue
        owners[decl.address] = name
        found.append(decl)
    return tuple(found)


def _socket(name: str, body: object, folder: Path, problems: Problems) -> SocketDecl | None:
    prefix = f"sockets.{name}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", name):  # it travels in LISTEN_FDNAMES, ':'-separated
        problems.add(prefix, f"socket name {name!r}: use letters, digits, '_', '.' and '-' only")
        return None
    if not isinstance(body, dict):
        problems.add(prefix, "expected a table with bind = \"HOST:PORT\" or \"unix:/path\"")
        return None
    before = len(problems.items)
    clean = problems.parsed(prefix + ".", body, SOCKET_KEYS)
    if "bind" not in body:
        problems.add(prefix, "missing 'bind' (like \"127.0.0.1:8000\", \"[::1]:8000\" or \"unix:/run/app.sock\")")
    if len(problems.items) > before:
        return None
    bind = str(clean["bind"])
    if bind.startswith("unix:@"):
        address = bind
        if "mode" in clean:
            problems.add(f"{prefix}.mode", "an abstract unix:@ socket has no file, so no mode")
            return None
    elif bind.startswith("unix:"):
        address = "unix:" + str((folder / bind[5:]).absolute())
        if len(address[5:].encode()) > 107:
            problems.add(f"{prefix}.bind", f"socket path is longer than the 107 bytes Unix sockets allow: {address[5:]}")
            return None
    else:
        if "mode" in clean:
            problems.add(f"{prefix}.mode", "mode applies to unix: sockets only")
            return None
        address = bind
    return SocketDecl(name, address, int(clean.get("backlog", DEFAULT_BACKLOG)),  # type: ignore[arg-type]
                      int(clean.get("mode", DEFAULT_UNIX_MODE)),  # type: ignore[arg-type]
                      float(clean.get("reset_after", DEFAULT_RESET_AFTER)))  # type: ignore[arg-type]


def check_template_sockets(template: str, names: tuple[str, ...], declared: tuple[SocketDecl, ...],
                           problems: Problems) -> None:
    """A template may name only declared sockets, each once."""
    if not names:  # most templates: no set of the declared names per template
        return
    known = {d.name for d in declared}
    keypath = f"workers.{template}.sockets"
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.add(keypath, f"socket {name!r} is named twice")
        elif name not in known:
            hint = f"; declared: {', '.join(sorted(known))}" if known else ""
            problems.add(keypath, f"no [sockets.{name}] table for socket {name!r}{hint}")
