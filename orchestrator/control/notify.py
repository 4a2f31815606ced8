"""The master's notify socket: systemd's sd_notify protocol plus orch's own keys.

Each child gets `NOTIFY_SOCKET` pointing here. A datagram holds newline-separated
KEY=VALUE pairs; the sender is identified by its kernel-checked pid (SCM_CREDENTIALS),
and a pid that is not an instance's leader is matched through its process group, so a
worker behind a shell wrapper can still speak. Keys read:
  READY=1            the instance is ready (rolling restarts wait for it)
  STATUS=text        free text shown by `orch status --json`
  WATCHDOG=1         a keep-alive; with `timeout`, READY=1 workers must send one that often
  ORCH_BEGIN=1       a request started (the `timeout` clock runs until ORCH_END/ORCH_IDLE)
  ORCH_END=1         a request finished (counts towards `max_requests`)
  ORCH_IDLE=1        a unit of work finished without counting
  ORCH_LIMIT=reason  the worker is ending itself for a limit (restart at once, no backoff)
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from pathlib import Path
from typing import Callable

from .server import bind_unix, close_listener
from ..loop import EventLoop

log = logging.getLogger("orch")
_UCRED = struct.Struct("3i")


def parse_notify(data: bytes) -> dict[str, str]:
    """KEY=VALUE lines into a dict (pure)."""
    fields: dict[str, str] = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key.strip()] = value
    return fields


class NotifyServer:
    """A datagram socket in the loop; calls `on_message(pid, fields)` for each datagram."""

    def __init__(self, loop: EventLoop, path: Path, on_message: Callable[[int, dict[str, str]], None],
                 sock: socket.socket | None = None):
        """`sock`: the socket a master handed over across exec (handover/), else bound at `path`."""
        self.loop = loop
        self.path = path
        self.on_message = on_message
        self.sock = sock if sock is not None else bind_unix(path, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(256):  # bounded, so a flood cannot starve the loop
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[:_UCRED.size])[0]
            if pid and data:
                self.on_message(pid, parse_notify(data))

    def close(self) -> None:
        close_listener(self.loop, self.sock, self.path)

