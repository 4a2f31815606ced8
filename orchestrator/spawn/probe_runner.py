"""Exec probes on the spawner's side: run one probe command as its instance would run (its
environment, working directory, user, limits and umask), in a session of its own, and report
its wait status. The master (supervise/probe_exec.py) keeps the timeout and asks for the kill:
the spawner's loop has no timers of its own. A probe is the spawner's child, never the
master's, whose SIGCHLD handler reaps every child with waitpid(-1).

Messages: ("probe", token, argv, env, inherit_env, cwd, setup) starts one, ("probe_kill",
token) ends its whole process group; the answer is ("probed", token, wait status), or
("probed", token, "why it could not start")."""

from __future__ import annotations

import os
from typing import Any, Callable

from .child import exec_or_report, kill_group, prepare_child
from .identity import apply_setup
from .posix import PosixStarter

STDIN_MAX = 32 * 1024  # what a hook may get on stdin: well within a pipe's 64 KiB


class ProbeRunner:  # pragma: no cover - runs in the spawner; covered by integration tests
    """The exec probes running in the spawner, by pid and by token."""

    def __init__(self, posix: PosixStarter, devnull: int, cookie: str,
                 send: Callable[[tuple[Any, ...]], None]) -> None:
        self.posix = posix
        self.devnull = devnull
        self.cookie = cookie
        self.send = send
        self.tokens: dict[int, int] = {}  # pid -> token
        self.pids: dict[int, int] = {}  # token -> pid
        self.errors: dict[int, int] = {}  # pid -> read end of its exec-error pipe

    def handle(self, message: tuple[Any, ...]) -> None:
        """A "probe" or "probe_kill" message from the master."""
        if message[0] == "probe_kill":
            pid = self.pids.get(message[1])
            if pid is not None:
                kill_group(pid)  # its own session: the command and whatever it started
            return
        _, token, argv, env, inherit, cwd, setup, stdin, output = message
        env = {**self.posix.environ, **env} if inherit else dict(env)
        env["ORCH_RUN"] = self.cookie
        program = self.posix.executable(argv[0], env)
        if "/" not in program:
            self.send(("probed", token, f"{argv[0]}: command not found"))
            return
        try:
            pid = self._fork_exec(program, tuple(argv), env, cwd, setup, stdin, output)
        except OSError as exc:
            self.send(("probed", token, f"fork failed: {exc.strerror}"))
            return
        self.tokens[pid], self.pids[token] = token, pid

    def _fork_exec(self, program: str, argv: tuple[str, ...], env: dict[str, str], cwd: str,
                   setup: Any, stdin: bytes = b"", output: bool = False) -> int:
        parent = os.getpid()
        source = self.devnull
        if stdin:  # a pipe holding all of it (STDIN_MAX fits a pipe's buffer: never a blocking write)
            source, writer = os.pipe()
            os.set_blocking(writer, False)
            try:
                os.write(writer, stdin[-STDIN_MAX:])
            except OSError:
                pass
            os.close(writer)
        err_r, err_w = os.pipe()  # close-on-exec: it holds words only if exec never happened
        try:
            pid = os.fork()
            if pid == 0:  # the probe fails with exit 127 and why, if it cannot run
                exec_or_report(err_w, lambda keep: prepare_child(
                    parent, source, 2 if output else self.devnull, cwd, keep=keep,
                    before_cwd=None if setup is None else lambda: apply_setup(setup, parent)), program, argv, env, cwd)
        except BaseException:
            os.close(err_r)
            raise
        finally:
            os.close(err_w)
            if source != self.devnull:
                os.close(source)
        self.errors[pid] = err_r
        return pid

    def known(self) -> set[int]:
        """The probes' pids: the spawner's children that are neither instances nor orphans."""
        return set(self.tokens)

    def reaped(self, pid: int, status: int) -> bool:
        """Report a probe's exit (and end what it left in its session); False if `pid` is no probe."""
        token = self.tokens.pop(pid, None)
        if token is None:
            return False
        self.pids.pop(token, None)
        kill_group(pid)
        self.send(("probed", token, self._could_not_run(pid) or status))
        return True

    def _could_not_run(self, pid: int) -> str:
        """Why an ended probe never ran its command ("" if it did): its error pipe is read
        once it has exited, so the read never waits (the write end closed with it)."""
        fd = self.errors.pop(pid)
        try:
            return os.read(fd, 1024).decode(errors="replace")
        except OSError:
            return ""
        finally:
            os.close(fd)
