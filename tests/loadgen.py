"""Real HTTP load for the socket tests: `wrk` (keep-alive, fast) and a Python client loop
(a new connection per request, so every request goes through the listen backlog)."""

from __future__ import annotations

import errno
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from typing import Callable, Union

Address = Union[tuple[str, int], str]  # (host, port) or a Unix socket path


def http_get(address: Address, timeout: float = 5.0) -> int:
    """One GET on a new connection; the status code. Raises OSError on a failed connection."""
    family = socket.AF_UNIX if isinstance(address, str) else \
        (socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    if not match:
        raise OSError(errno.EPROTO, f"not an HTTP response: {data[:80]!r}")
    return int(match.group(1))


class ClientLoop:
    """Threads sending requests until stopped; counts statuses and errors by kind."""

    def __init__(self, address: Callable[[], Address], threads: int = 2):
        self.address = address
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "ClientLoop":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = http_get(self.address())
            except OSError as exc:
                kind = type(exc).__name__
                with self._lock:
                    self.errors[kind] += 1
                    self.examples.setdefault(kind, str(exc))
                continue
            with self._lock:
                self.statuses[status] += 1

    def wait_requests(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` more requests were answered (load is really flowing)."""
        target = self.total + count
        deadline = time.monotonic() + timeout
        while self.total < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"the client loop made {self.total} requests, wanted {target}")
            time.sleep(0.01)

    def assert_clean(self) -> None:
        assert not self.errors, f"failed requests: {dict(self.errors)} e.g. {self.examples}"
        assert set(self.statuses) == {200}, f"statuses: {dict(self.statuses)}"
        assert self.statuses[200] > 0


class Wrk:
    """`wrk` in the background for a fixed time; `result()` parses its summary."""

    def __init__(self, url: str, seconds: int = 4, connections: int = 8):
        exe = shutil.which("wrk")
        if exe is None:
            raise AssertionError("wrk is not installed: run scripts/test-deps (Debian package wrk)")
        self.proc = subprocess.Popen([exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", url],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def __enter__(self) -> "Wrk":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def result(self, timeout: float = 30.0) -> dict[str, int]:
        out, _ = self.proc.communicate(timeout=timeout)
        found = re.search(r"(\d+) requests in", out)
        if found is None:
            raise AssertionError(f"cannot read wrk's output:\n{out}")
        result = {"requests": int(found.group(1)), "connect": 0, "read": 0, "write": 0, "timeout": 0,
                  "non2xx": 0, "output": out}  # type: ignore[dict-item]
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if errors:
            for key, value in zip(("connect", "read", "write", "timeout"), errors.groups()):
                result[key] = int(value)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if non2xx:
            result["non2xx"] = int(non2xx.group(1))
        return result

    def assert_clean(self) -> dict[str, int]:
        result = self.result()
        bad = {k: result[k] for k in ("connect", "read", "write", "timeout", "non2xx") if result[k]}
        assert not bad and result["requests"] > 0, f"wrk saw errors {bad}:\n{result['output']}"
        return result
