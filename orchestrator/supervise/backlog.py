"""Reading one backlog as non-blocking work on the master's loop (supervise/scaler.py asks at
most once a second per source). Redis (RESP: LLEN, or XINFO GROUPS for a stream's lag plus
pending) and beanstalkd (`stats-tube`, current-jobs-ready) are tiny protocols spoken on a
non-blocking socket watched by the loop; a host name is resolved by a short thread that only
hands its answer back through `call_soon_threadsafe`. A `command` source is posix_spawned
with its stdout on a non-blocking pipe (no Python runs between fork and exec; the master's
SIGCHLD reaper collects it like any unknown child) and killed through a pidfd at its
timeout. Every reading ends in `done(count, None)` or `done(None, why)`, exactly once."""

from __future__ import annotations

import errno
import ipaddress
import os
import signal
import socket
import threading
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from ..config.scaling import BacklogDecl
from ..loop import EventLoop, Timer

Done = Callable[[int | None, str | None], None]
TIMEOUT = 2.0  # a server that has not answered by then counts as unreadable
MAX_REPLY = 1 << 20
RESOLVE_TTL = 60.0  # a host name's address is looked up again after this long
RESOLVED: dict[str, tuple[str, float]] = {}  # name: (address, until), touched only on the loop


def resp_command(*args: str | bytes) -> bytes:
    """One Redis command in RESP (pure)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        data = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespError(Exception):
    """An error reply (-ERR ...)."""


def parse_resp(buf: bytes, at: int = 0) -> tuple[Any, int] | None:
    """One RESP2 value from `buf` at `at`: (value, next position), or None if incomplete (pure).
    Error replies come back as RespError values, not raised."""
    end = buf.find(b"\r\n", at)
    if end < 0:
        return None
    kind, line = buf[at:at + 1], buf[at + 1:end]
    if kind == b"+":
        return line.decode(), end + 2
    if kind == b"-":
        return RespError(line.decode(errors="replace")), end + 2
    if kind == b":":
        return int(line), end + 2
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, end + 2
        if len(buf) < end + 2 + size + 2:
            return None
        return buf[end + 2:end + 2 + size], end + 4 + size
    if kind == b"*":
        count, items, pos = int(line), [], end + 2
        for _ in range(max(count, 0)):
            got = parse_resp(buf, pos)
            if got is None:
                return None
            items.append(got[0])
            pos = got[1]
        return (items if count >= 0 else None), pos
    raise ValueError(f"not a Redis reply: {buf[at:at + 20]!r}")


def redis_request(source: BacklogDecl, held: tuple[str, ...] = ()) -> tuple[str, int, bytes, int]:
    """(host, port, the pipelined request, how many replies) for a redis source (pure). A list
    also counts its retries waiting in `LIST:delayed` and the lists `held` (orch's consumers'
    processing lists): work no running consumer may be left to pick up (min = 0)."""
    url = urlsplit(source.url)
    if url.scheme != "redis" or not url.hostname:
        raise ValueError(f"expected redis://[:PASSWORD@]HOST[:PORT][/DB], got scheme {url.scheme!r}")
    commands = []
    if url.password is not None:
        user = unquote(url.username) if url.username else None
        commands.append(resp_command("AUTH", *([user] if user else []), unquote(url.password)))
    db = url.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"bad database number {db!r}")
    commands.append(resp_command("SELECT", db))
    if source.kind == "redis":
        commands += [resp_command("LLEN", source.key), resp_command("ZCARD", f"{source.key}:delayed")]
        commands += [resp_command("LLEN", key) for key in held]
    else:
        commands += [resp_command("XLEN", source.key), resp_command("XINFO", "GROUPS", source.key)]
    return url.hostname, url.port or 6379, b"".join(commands), len(commands)


def redis_backlog(kind: str, group: str, replies: list[Any], counts: int = 1) -> int:
    """The backlog from the replies (pure): for a list, the sum of its `counts` last replies
    (its length, its delayed retries, the processing lists asked about); for a stream, the
    group's lag plus pending (the whole stream when the group does not exist yet; nothing when
    the stream does not)."""
    for reply in replies[:-2 if kind == "redis-stream" else len(replies)]:
        if isinstance(reply, RespError):
            raise ValueError(str(reply))
    if kind == "redis":
        return sum(int(r) for r in replies[-counts:])
    length, groups = replies[-2], replies[-1]
    if isinstance(length, RespError):
        raise ValueError(str(length))
    if isinstance(groups, RespError):
        return 0 if "no such key" in str(groups).lower() else _raise(str(groups))
    for fields in groups:
        info = {(k.decode() if isinstance(k, bytes) else k): v for k, v in zip(fields[::2], fields[1::2])}
        name = info.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag = info.get("lag")
            return int(info.get("pending") or 0) + (int(lag) if isinstance(lag, int) else int(length))
    return int(length)


def _raise(text: str) -> int:
    raise ValueError(text)


def beanstalk_backlog(reply: bytes) -> int | None:
    """current-jobs-ready from a complete `stats-tube` reply; None while incomplete (pure)."""
    head, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return None
    if head == b"NOT_FOUND":
        return 0
    if not head.startswith(b"OK "):
        raise ValueError(head.decode(errors="replace")[:200])
    size = int(head[3:])
    if len(rest) < size + 2:
        return None
    for line in rest[:size].decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "current-jobs-ready":
            return int(value)
    raise ValueError("no current-jobs-ready in stats-tube")


def beanstalk_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("beanstalk", "beanstalkd") or not parts.hostname:
        raise ValueError(f"expected beanstalk://HOST[:PORT], got {url!r}")
    return parts.hostname, parts.port or 11300


class Reading:
    """One reading of one source; `start()` once, `cancel()` to drop it without an answer."""

    def __init__(self, loop: EventLoop, source: BacklogDecl, done: Done, env: dict[str, str] | None = None,
                 cwd: str | None = None, held: tuple[str, ...] = ()) -> None:
        self.loop, self.source, self.done = loop, source, done
        self.env, self.cwd, self.held = env, cwd, held
        self.sock: socket.socket | None = None
        self.fd: int | None = None  # command: the read end of its stdout
        self.pidfd: int | None = None
        self.timer: Timer | None = None
        self.buf = b""
        self.request = b""
        self.replies = 0
        self.finished = False

    def start(self) -> None:
        timeout = self.source.timeout if self.source.kind == "command" else TIMEOUT
        self.timer = self.loop.call_later(timeout, lambda: self._finish(None, f"no answer within {timeout:g}s"))
        try:
            if self.source.kind == "command":
                self._spawn()
            elif self.source.kind == "beanstalkd":
                host, port = beanstalk_address(self.source.url)
                self.request = f"stats-tube {self.source.key}\r\n".encode()
                self._resolve(host, port)
            else:
                host, port, self.request, self.replies = redis_request(self.source, self.held)
                self._resolve(host, port)
        except (OSError, ValueError) as exc:
            self._finish(None, _words(exc))

    def cancel(self) -> None:
        self.finished = True
        self._close()

    def _resolve(self, host: str, port: int) -> None:
        name = "127.0.0.1" if host == "localhost" else host
        try:
            ipaddress.ip_address(name)
        except ValueError:  # a name: looked up off the loop, the answer handed back to it
            known = RESOLVED.get(name)
            if known is not None and known[1] > self.loop.time():
                self._connect(known[0], port)
                return
            def lookup() -> None:
                try:
                    info = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
                    address = info[0][4][0]
                    self.loop.call_soon_threadsafe(lambda: self._resolved(name, address, port))
                except OSError as exc:
                    self.loop.call_soon_threadsafe(lambda: self._finish(None, f"cannot resolve {name}: {exc}"))
            threading.Thread(target=lookup, name="orch-backlog-lookup", daemon=True).start()
            return
        self._connect(name, port)

    def _resolved(self, name: str, address: str, port: int) -> None:
        RESOLVED[name] = (address, self.loop.time() + RESOLVE_TTL)  # on the loop: no lock needed
        self._connect(address, port)

    def _connect(self, host: str, port: int) -> None:
        if self.finished:
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            err = self.sock.connect_ex((host, port))
        except OSError as exc:
            self._finish(None, _words(exc))
            return
        if err not in (0, errno.EINPROGRESS):
            self._finish(None, f"{host}:{port}: {os.strerror(err).lower()}")
            return
        self.loop.add_writer(self.sock.fileno(), self._connected)

    def _connected(self) -> None:
        assert self.sock is not None
        self.loop.remove_writer(self.sock.fileno())
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        try:
            if err:
                raise OSError(err, os.strerror(err).lower())
            if self.sock.send(self.request) != len(self.request):  # a few dozen bytes
                raise OSError(errno.EAGAIN, "could not send the request")
        except OSError as exc:
            self._finish(None, _words(exc))
            return
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(None, _words(exc))
            return
        self.buf += data
        try:
            value = self._parsed()
        except (ValueError, IndexError, TypeError) as exc:
            self._finish(None, _words(exc))
            return
        if value is not None:
            self._finish(value, None)
        elif not data or len(self.buf) > MAX_REPLY:
            self._finish(None, "the server closed the connection" if not data else "reply too long")

    def _parsed(self) -> int | None:
        if self.source.kind == "beanstalkd":
            return beanstalk_backlog(self.buf)
        replies, pos = [], 0
        for _ in range(self.replies):
            got = parse_resp(self.buf, pos)
            if got is None:
                return None
            replies.append(got[0])
            pos = got[1]
        return redis_backlog(self.source.kind, self.source.group, replies, 2 + len(self.held))

    def _spawn(self) -> None:
        read, write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            pid = os.posix_spawnp(self.source.argv[0], list(self.source.argv), self._environ(),
                                  file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                                (os.POSIX_SPAWN_DUP2, write, 1),
                                                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
                                  setsid=True) if self.cwd is None else self._spawn_in(write)
        except OSError:
            os.close(read)
            raise
        finally:
            os.close(write)
        # No reaping can run between the spawn and this line (one loop, one callback): the
        # pidfd names exactly this process, so the timeout never kills a reused pid.
        self.pidfd = os.pidfd_open(pid)
        self.fd = read
        self.loop.add_reader(read, self._output)

    def _environ(self) -> dict[str, str]:
        return self.env if self.env is not None else dict(os.environ)

    def _spawn_in(self, write: int) -> int:
        # posix_spawn has no chdir action before Python 3.13: run it through `sh -c 'cd && exec'`.
        argv = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', self.cwd or ".", *self.source.argv]
        return os.posix_spawn("/bin/sh", argv, self._environ(),
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                            (os.POSIX_SPAWN_DUP2, write, 1),
                                            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
                              setsid=True)

    def _output(self) -> None:
        assert self.fd is not None
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(None, _words(exc))
            return
        self.buf += data
        if data and len(self.buf) <= 4096:
            return
        text = self.buf.decode(errors="replace").strip()
        if text.isdigit():
            self._finish(int(text), None)
        else:
            self._finish(None, f"{self.source.argv[0]} printed {text[:60]!r}, not a whole number")

    def _finish(self, count: int | None, why: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        self._close()
        self.done(count, why)

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.loop.remove_writer(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None
        if self.pidfd is not None:
            try:  # done or timed out: a command still running is not left behind
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass  # it has exited
            os.close(self.pidfd)
            self.pidfd = None


def _words(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)[:200]
