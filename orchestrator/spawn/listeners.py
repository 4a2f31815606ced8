"""The listening sockets the master holds for `[sockets.*]`: bound once (or adopted from
systemd), handed to the spawner, kept across every worker restart so their backlog never
goes away, and closed only when no instance uses them any more.

Each socket is known by its key, "name=address": a changed address is a new key, so the old
socket can keep serving its last workers while the new one serves the restarted ones.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Callable

from ..config.locate import Problems
from ..config.sockets import SocketDecl
from ..errors import ConfigError

log = logging.getLogger("orch")
SD_LISTEN_FDS_START = 3


class BindFailed(Exception):
    """Some sockets could not be bound: [(declaration, message)], nothing else changed."""

    def __init__(self, failures: list[tuple[SocketDecl, str]]):
        self.failures = failures
        super().__init__("; ".join(message for _, message in failures))

    def as_config_error(self, config_path: Path) -> ConfigError:
        """The failures located at each socket's `bind` line."""
        try:
            text = config_path.read_text(encoding="utf-8")
        except OSError:
            text = ""
        problems = Problems(config_path, text)
        for decl, message in self.failures:
            problems.add(f"sockets.{decl.name}.bind", message)
        return ConfigError(problems.items)


def take_systemd_sockets() -> dict[str, socket.socket]:
    """The listening sockets systemd passed to this process (LISTEN_FDS), by LISTEN_FDNAMES
    name; the variables are removed so no child mistakes them for its own."""
    env = os.environ
    count, pid = env.pop("LISTEN_FDS", ""), env.pop("LISTEN_PID", "")
    names = env.pop("LISTEN_FDNAMES", "").split(":")
    if not count.isdigit() or pid != str(os.getpid()):
        return {}
    found: dict[str, socket.socket] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] else "unknown"
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("systemd fd %d (%s) is not a socket: %s", fd, name, exc)
            continue
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            log.warning("systemd fd %d (%s) is not a listening socket: not adopted", fd, name)
            sock.detach()
            continue
        found[name] = sock
    return found


def bind(decl: SocketDecl) -> socket.socket:
    """A listening socket for one declaration; OSError with a readable message on failure."""
    path = decl.unix_path
    if path is not None:
        return _bind_unix(Path(path), decl)
    if decl.abstract:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + decl.address[6:])
            sock.listen(decl.backlog)
        except BaseException:
            sock.close()
            raise
        return sock
    host, _, port = decl.address.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted master must bind again at once, despite connections in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # "[::]" means IPv6 only; 0.0.0.0 can be bound beside it
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(infos[0][4])
        sock.listen(decl.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_unix(path: Path, decl: SocketDecl) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX) as probe:  # a live server there: never steal its path
            if probe.connect_ex(str(path)) == 0:
                raise OSError(errno.EADDRINUSE, f"another process is listening on {path}")
        path.unlink()  # stale, left by a process that died
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~decl.mode)  # never visible with wider permissions
    try:
        sock.bind(str(path))
        os.chmod(path, decl.mode)
        sock.listen(decl.backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


class Listeners:
    """The master's sockets by key; `update` binds a config's new ones all-or-nothing."""

    def __init__(self, adopted: dict[str, socket.socket] | None = None):
        self.adopted = adopted or {}
        self.held: dict[str, socket.socket] = {}
        self.decls: dict[str, SocketDecl] = {}
        self.retired: set[str] = set()  # not in the config any more; closed when unused
        self._unix_files: dict[str, tuple[Path, int]] = {}  # key -> (path, inode) we created
        self.annotate: Callable[[str], dict[str, object]] = lambda key: {}  # more status, by key

    def items(self) -> list[tuple[str, int]]:
        """(key, fd) of every held socket, to hand to a spawner."""
        return [(key, sock.fileno()) for key, sock in self.held.items()]

    def status(self) -> list[dict[str, object]]:
        """Rows for `orch status --json`: what the master holds, and what it will close."""
        return [{"name": decl.name, "address": decl.address, "backlog": decl.backlog,
                 "adopted": any(s is self.held[key] for s in self.adopted.values()),
                 "retired": key in self.retired, **self.annotate(key)}
                for key, decl in self.decls.items() if key in self.held]

    def fds(self) -> tuple[int, ...]:
        return tuple(s.fileno() for s in self.held.values()) + \
            tuple(s.fileno() for s in self.adopted.values())

    def update(self, decls: tuple[SocketDecl, ...]) -> list[tuple[str, int]]:
        """Bind what `decls` adds (raising BindFailed, with nothing changed, if any bind
        fails), apply backlog and mode changes, retire what is gone; returns the new (key, fd)."""
        fresh: dict[str, socket.socket] = {}
        failures: list[tuple[SocketDecl, str]] = []
        for decl in decls:
            if decl.key in self.held:
                continue
            try:
                fresh[decl.key] = self._open(decl)
            except OSError as exc:
                failures.append((decl, f"cannot bind {decl.address}: {exc.strerror or exc}"))
        if failures:
            for key, sock in fresh.items():
                self._close(key, sock)
            raise BindFailed(failures)
        for decl in decls:
            old = self.decls.get(decl.key)
            if old is not None and decl.key not in fresh:
                self._adjust(old, decl)
            self.decls[decl.key] = decl
        self.held.update(fresh)
        wanted = {d.key for d in decls}
        self.retired = set(self.held) - wanted
        return [(key, sock.fileno()) for key, sock in fresh.items()]

    def bind_config(self, sockets: tuple[SocketDecl, ...], config_path: Path) -> list[tuple[str, int]]:
        """`update` for a loaded config: a failed bind is a ConfigError at its `bind` line."""
        try:
            return self.update(sockets)
        except BindFailed as exc:
            raise exc.as_config_error(config_path) from None

    def _open(self, decl: SocketDecl) -> socket.socket:
        adopted = self.adopted.get(decl.name) or next(
            (s for s in self.adopted.values() if _same_address(s, decl.address)), None)
        if adopted is not None:
            log.info("sockets.%s: adopted from systemd (%s)", decl.name, _where(adopted))
            return adopted
        for key, held in self.decls.items():  # a renamed socket keeps its address: same socket
            if held.address == decl.address and key in self.held:
                if key in self._unix_files:
                    self._unix_files[decl.key] = self._unix_files[key]
                log.info("sockets.%s: now the name of %s", decl.name, decl.address)
                return self.held[key]
        sock = bind(decl)
        if decl.unix_path is not None:
            self._unix_files[decl.key] = (Path(decl.unix_path), os.stat(decl.unix_path).st_ino)
        log.info("sockets.%s: listening on %s", decl.name, decl.address)
        return sock

    def _adjust(self, old: SocketDecl, new: SocketDecl) -> None:
        """Backlog and mode change in place: the socket, and its queue, stay."""
        sock = self.held[new.key]
        if old.backlog != new.backlog:
            sock.listen(new.backlog)
        if old.mode != new.mode and new.key in self._unix_files:
            os.chmod(self._unix_files[new.key][0], new.mode)

    def release(self, in_use: set[str]) -> list[str]:
        """Close the retired sockets no instance uses any more; returns their keys."""
        done = sorted(self.retired - in_use)
        for key in done:
            self.retired.discard(key)
            self.decls.pop(key, None)
            self._close(key, self.held.pop(key))
            log.info("socket %s closed: no instance uses it any more", key)
        return done

    def _close(self, key: str, sock: socket.socket) -> None:
        path, inode = self._unix_files.pop(key, (None, 0))
        if any(s is sock for k, s in self.held.items() if k != key) or \
                any(s is sock for s in self.adopted.values()):
            return  # still held under another name, or systemd's (it keeps it for the next master)
        sock.close()
        try:
            if path is not None and os.stat(path).st_ino == inode:  # still the file we made
                path.unlink()
        except OSError:
            pass

    def close_all(self) -> None:
        for key in list(self.held):
            self._close(key, self.held.pop(key))


def _same_address(sock: socket.socket, address: str) -> bool:
    """Whether a socket from systemd listens on `address`: how one is adopted when its name
    is not the [sockets.NAME] (systemd names an fd after its .socket unit by default)."""
    try:
        bound = sock.getsockname()
    except OSError:
        return False
    if address.startswith("unix:@"):
        return bound == b"\0" + address[6:].encode()
    if address.startswith("unix:"):
        return bound == address[5:]
    host, _, port = address.rpartition(":")
    try:
        return isinstance(bound, tuple) and bound[1] == int(port) and \
            ipaddress.ip_address(bound[0]) == ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a host name in the config: match by name only
        return False


def _where(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    return name if isinstance(name, str) else f"{name[0]}:{name[1]}"
