"""`python -m orchestrator.worker.listen NAME[/BACKLOG]=ADDRESS... -- PROGRAM ARGS...`

What `orch export` puts in front of a worker that uses `[sockets.*]` when the target
(supervisord, honcho, foreman) has no master to hold a shared socket: the process binds each
address itself, puts the sockets at fds 3, 4, ... in the order given, sets LISTEN_FDS,
LISTEN_FDNAMES and LISTEN_PID as systemd would, and execs the program, which sees exactly
what it sees under `orch up`.

TCP addresses are bound with SO_REUSEPORT, so every replica binds the same port and the
kernel spreads connections over them. What is lost against `orch up`: each process has its
own accept queue, so connections queued at a process that stops are reset. A `unix:` path
can have one holder only; a stale socket file (no listener) is replaced.
"""

from __future__ import annotations

import os
import socket
import stat
import sys

FIRST_FD = 3


def _parse(word: str) -> tuple[str, str, int]:
    """NAME[/BACKLOG]=ADDRESS (a socket name holds no '/' or '=')."""
    head, sep, address = word.partition("=")
    name, _, backlog = head.partition("/")
    if not sep or not name or not address or not (backlog or "1024").isdigit():
        raise ValueError(f"expected NAME[/BACKLOG]=ADDRESS, got {word!r}")
    return name, address, int(backlog or 1024)


def _bind(address: str, backlog: int) -> socket.socket:
    if address.startswith("unix:"):
        path = address[5:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = "\0" + path[1:] if path.startswith("@") else path
        if not path.startswith("@"):
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        probe.connect(path)
                        raise OSError(f"{path} is in use by another process")
                    except (ConnectionRefusedError, FileNotFoundError):
                        os.unlink(path)  # stale: nobody listens on it
                    finally:
                        probe.close()
            except FileNotFoundError:
                pass
        sock.bind(target)
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, int(port)))
    sock.listen(backlog)
    return sock


def main(argv: list[str]) -> int:
    """Bind, place the fds, exec; exit 2 with one line on bad usage or a failed bind."""
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: python -m orchestrator.worker.listen NAME[/BACKLOG]=ADDRESS... -- PROGRAM [ARGS...]",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    try:
        wanted = [_parse(word) for word in argv[:split]]
        sockets = [_bind(address, backlog) for _, address, backlog in wanted]
    except (ValueError, OSError) as exc:
        print(f"orch listen: {exc}", file=sys.stderr)
        return 2
    # Move every socket above the target range first, so placing one never closes another.
    high = [os.dup(sock.fileno()) for sock in sockets]
    for sock in sockets:
        sock.close()
    for offset, fd in enumerate(high):
        os.dup2(fd, FIRST_FD + offset, inheritable=True)
    for fd in high:  # every slot below a dup was taken, so each lies above the range
        os.close(fd)
    os.environ.update({"LISTEN_FDS": str(len(high)), "LISTEN_PID": str(os.getpid()),
                       "LISTEN_FDNAMES": ":".join(name for name, _, _ in wanted)})
    program = argv[split + 1:]
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        print(f"orch listen: cannot run {program[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
