"""Child-side helpers shared by the spawner and the zygote: prctl, the set-up of a
just-forked child, reaping, killing a process group, the helpers' message format and the
process title."""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import pickle
import signal
import socket
from typing import Any, Callable, Iterator, Sequence

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MAX_FDS_PER_MESSAGE = 64
MAX_FDS_RECEIVED = 253  # SCM_MAX_FD: a zygote's message carries 64 outputs plus the sockets
MAX_EVENTS_PER_MESSAGE = 256
# Messages between master, spawner and zygotes are SOCK_SEQPACKET datagrams: one that is
# bigger than the receiver's buffer is cut short (a truncated pickle wedged every instance of
# the batch in "starting"). Spawn batches are packed to MESSAGE_BYTES (requests_in_batches);
# one request is at most MAX_REQUEST_BYTES (expansion refuses bigger argv + env: exec's own
# ceiling is 2 MiB); receivers take RECEIVE_BYTES and the socket buffers hold SOCKET_BUFFER.
MESSAGE_BYTES = 1 << 20
MAX_REQUEST_BYTES = 1 << 20
RECEIVE_BYTES = 4 << 20
SOCKET_BUFFER = 4 << 20
MAX_FD = 1 << 20  # above any RLIMIT_NOFILE the master sets (it raises the soft limit to the hard one)
# Signals the master coordinates; the spawner must not die of them (a Ctrl-C reaches the
# whole foreground group), and its children must get them back at their defaults.
_COORDINATED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGTSTP)
_RESET_IN_CHILD = _COORDINATED + (signal.SIGPIPE, signal.SIGCHLD, signal.SIGXFSZ, signal.SIGTTIN,
                                  signal.SIGTTOU)

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")


def prepare_child(parent: int, stdin: int, out: int, cwd: str, sockets: Sequence[int] = (),
                  keep: int = -1, err: int | None = None,
                  before_cwd: Callable[[], None] | None = None) -> None:  # pragma: no cover - in children
    """In a just-forked child: its own session and process group, death with its parent,
    default signals, stdin from /dev/null, stdout to `out` and stderr to `err` (default:
    `out`), the listening `sockets` at fds 3, 4, ... (inheritable), no other fd but `keep`
    (the exec-error pipe, close-on-exec, above the sockets), then `before_cwd` (identity.py's
    limits, umask and user), and the working directory, entered as that user."""
    # A session of its own: a descendant that moves to another process group (rq's
    # work-horse) still carries the instance's session id, which attributes it.
    os.setsid()
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before PDEATHSIG was armed
        os._exit(1)
    for signum in _RESET_IN_CHILD:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.dup2(stdin, 0)
    os.dup2(out, 1)
    os.dup2(out if err is None else err, 2)
    pass_sockets(sockets)  # 3 .. 2+len(sockets)
    close_fds(keep, first=3 + len(sockets))  # `out` and `err` too
    if before_cwd is not None:
        before_cwd()
    os.chdir(cwd)


def exec_error(exc: BaseException, program: str, cwd: str) -> bytes:  # pragma: no cover - in children
    """What a child that could not exec writes to its close-on-exec error pipe: the program
    and the reason, or the working directory when that is what is missing."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
    detail = f"{program}: {text}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES) \
            and not os.path.isdir(cwd):
        detail = f"cwd {cwd}: {text}"
    return detail.encode(errors="replace")[:1000]


def exec_or_report(err_w: int, prepare: Callable[[int], None], program: str, argv: Sequence[str],
                   env: dict[str, str], cwd: str, above: int = 0) -> None:  # pragma: no cover - in children
    """In a just-forked child: `prepare(err_w)` it (the error pipe's fd to keep; moved to
    `above` or higher first when given, out of the range sockets go to), then exec; whatever
    fails is written to that close-on-exec error pipe (exec_error) and the child exits 127.
    Never returns."""
    try:
        if above:
            err_w = fcntl.fcntl(err_w, fcntl.F_DUPFD_CLOEXEC, above)
        prepare(err_w)
        os.execve(program, list(argv), env)
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the parent reads why
        try:
            os.write(err_w, exec_error(exc, argv[0], cwd))
        finally:
            os._exit(127)


def pass_sockets(fds: Sequence[int]) -> None:  # pragma: no cover - in children
    """Put `fds` at 3, 4, ... in order, without CLOEXEC so they survive exec. Each is first
    moved above the target range, so a source that sits at a target number is never
    overwritten before it is copied. The fds above 3+len(fds)-1 are left to the caller."""
    first_free = 3 + len(fds)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, first_free) for fd in fds]
    for target, fd in enumerate(moved, 3):
        os.dup2(fd, target, inheritable=True)
        os.close(fd)


def listen_env(names: Sequence[str]) -> dict[str, str]:  # pragma: no cover - in children
    """The systemd socket-activation variables for this process (call after fork: LISTEN_PID
    must be the pid of the process that reads them, as sd_listen_fds checks)."""
    return {"LISTEN_FDS": str(len(names)), "LISTEN_FDNAMES": ":".join(names),
            "LISTEN_PID": str(os.getpid())}


def close_fds(keep: int = -1, first: int = 3) -> None:  # pragma: no cover - in children
    """Close every fd from `first` up but `keep`: siblings' pipes, the helpers' sockets and
    whatever the launcher of `orch up` left open never reach a worker (close_range(2) underneath)."""
    if keep >= first:
        os.closerange(first, keep)
        os.closerange(keep + 1, MAX_FD)
    else:
        os.closerange(first, MAX_FD)


def reaped() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has exited, without blocking: signals coalesce,
    so one SIGCHLD may stand for many exits."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def kill_group(pgid: int) -> bool:
    """SIGKILL a whole process group, if any member is left; whether one was."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def receive(sock: socket.socket) -> tuple[tuple[Any, ...], list[int]] | None:  # pragma: no cover
    """One pickled message and the fds sent with it; ((), []) when nothing is ready, None at
    EOF (the other end is gone)."""
    try:
        data, fds = _recv_fds(sock)
    except (BlockingIOError, InterruptedError):
        return (), []
    except OSError:
        return None
    if not data:
        return None
    try:
        return pickle.loads(data), fds
    except Exception:  # noqa: BLE001 - a bad message is dropped; the master times the spawn out
        for fd in fds:
            os.close(fd)
        return (), []


def _recv_fds(sock: socket.socket) -> tuple[bytes, list[int]]:  # pragma: no cover - in the helpers
    """recvmsg with MSG_CMSG_CLOEXEC: a child forked before these fds are closed must not
    inherit them (socket.recv_fds drops its flags argument before Python 3.12)."""
    fds = array.array("i")
    data, ancillary, flags, _ = sock.recvmsg(RECEIVE_BYTES, socket.CMSG_LEN(MAX_FDS_RECEIVED * fds.itemsize),
                                             socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if flags & socket.MSG_TRUNC:  # cannot happen with batches packed by size; never unpickle half
        for fd in fds:
            os.close(fd)
        return b"\0", []
    return data, list(fds)


def request_bytes(request: Any) -> int:
    """About how many bytes `request` (a SpawnRequest) pickles to: its strings plus framing."""
    return (256 + sum(len(a) + 8 for a in request.argv)
            + sum(len(k) + len(v) + 16 for k, v in request.env.items()) + len(request.cwd))


def in_batches(requests: Sequence[Any], size: Any = request_bytes) -> Iterator[tuple[int, int]]:
    """(start, end) slices of `requests` that fit one message: at most MAX_FDS_PER_MESSAGE
    requests and MESSAGE_BYTES by `size` (a lone bigger request goes alone)."""
    start, total = 0, 0
    for i, request in enumerate(requests):
        bytes_ = size(request)
        if i > start and (i - start >= MAX_FDS_PER_MESSAGE or total + bytes_ > MESSAGE_BYTES):
            yield start, i
            start, total = i, 0
        total += bytes_
    if start < len(requests):
        yield start, len(requests)


def buffered_pair() -> tuple[socket.socket, socket.socket]:
    """A SOCK_SEQPACKET socketpair whose buffers hold the largest message we send."""
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in ends:
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    return ends
