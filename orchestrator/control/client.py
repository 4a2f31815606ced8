"""The control socket's client side: what the CLI needs to talk to a master (wire format in
server.py). Kept apart from the server so a CLI call imports neither the event loop nor
logging: every `orch` command pays for its imports before it can ask anything."""

from __future__ import annotations

import io
import json
from _socket import AF_UNIX, SOCK_STREAM, socket  # socket.py's wrappers (enum constants, selectors) were 2-4 ms of every call
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: 3-6 ms of every `orch` call
if TYPE_CHECKING:
    from typing import Any

from ..errors import NoMasterError, OrchError


class ControlError(Exception):
    """A request the master refuses; `code` becomes the CLI's exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _Received(io.RawIOBase):
    """The socket's receiving side as a raw stream, for a BufferedReader: what
    `socket.makefile("rb")` gives, without importing socket.py for it."""

    def __init__(self, sock: socket) -> None:
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.sock.recv_into(buffer)


class ControlClient:
    """The CLI's end: send requests, read replies."""

    def __init__(self, path: Path, timeout: float | None = 30.0):
        self.path = path
        self.sock = socket(AF_UNIX, SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise NoMasterError(f"no orch master is running (no one listens on {path})") from None
        except PermissionError:
            self.sock.close()
            raise OrchError(f"permission denied on the control socket {path}: it is for the user "
                            "the master runs as (and root)") from None
        self.reader = io.BufferedReader(_Received(self.sock), 1 << 16)  # large reads: a status is megabytes

    def call(self, cmd: str, **args: Any) -> Any:
        return self.call_with_tail(cmd, **args)[0]

    def call_with_tail(self, cmd: str, **args: Any) -> tuple[Any, bytes]:
        """The result, and the raw bytes the master sent after it (b"" when none)."""
        try:
            self.sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once (another uid): the reason may be waiting to be read
        try:
            line = self.reader.readline()
        except ConnectionResetError:
            line = b""
        if not line:
            raise OrchError("the master closed the connection without answering")
        reply = json.loads(line)
        tail = self._read_tail(reply.get("tail") or 0)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "failed"), reply.get("code", 1))
        return reply.get("result"), tail

    def _read_tail(self, size: int) -> bytes:
        tail = self.reader.read(size) if size > 0 else b""  # one read of what is left after the buffer
        if len(tail) < size:
            raise OrchError("the master closed the connection in the middle of its answer")
        return tail

    def wait_closed(self, timeout: float | None) -> bool:
        """Block until the master closes the connection (it has exited); False on timeout."""
        self.sock.settimeout(timeout)
        try:
            while self.reader.read(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def request(path: Path, cmd: str, **args: Any) -> Any:
    """One request on a fresh connection."""
    client = ControlClient(path)
    try:
        return client.call(cmd, **args)
    finally:
        client.close()
