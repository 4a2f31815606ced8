"""The Python worker API: subclass `Worker`, point a template's `target` at it.

    class QueueWorker(Worker):
        def init(self): ...          # once, in the child, before the loop
        def run(self) -> bool: ...   # one unit of work; True counts one request
        def after_run(self): ...     # on normal end or graceful stop (not on SIGKILL)

The runtime tells the master what it does over the notify protocol (`NOTIFY_SOCKET`):
READY=1 after init(), ORCH_BEGIN=1 / ORCH_END=1 around each counted run() (the master
enforces `timeout` and `max_requests` from these), and ORCH_LIMIT=max_requests when it
stops itself after its last allowed request. SIGTERM finishes the current run(), calls
after_run() and exits 0. Run directly as `python -m orchestrator.worker --target mod:Class`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
from typing import Any

from ..title import set_title
from ..wakeup import wakeup_pair


class Worker:
    """Base class for Python workers run by orch."""

    def __init__(self, name: str, kwargs: dict[str, Any], log: logging.Logger):
        self.name = name
        self.kwargs = kwargs
        self.log = log
        self.sockets: dict[str, socket.socket] = listen_sockets()  # the template's `sockets`

    def init(self) -> None:
        """Set up connections and state, once, in the child."""

    def run(self) -> bool:
        """Do one unit of work; return True when it handled a request."""
        raise NotImplementedError

    def after_run(self) -> None:
        """Clean up after the loop ends (normal end or graceful stop)."""


_notify_socket: tuple[int, socket.socket] | None = None  # (pid, socket): reused, two per request


def notify(message: str) -> None:
    """Send a notify datagram (systemd's sd_notify protocol) if NOTIFY_SOCKET is set."""
    global _notify_socket
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    if _notify_socket is None or _notify_socket[0] != os.getpid():  # a forked child gets its own
        if _notify_socket is not None:
            _notify_socket[1].close()
        _notify_socket = (os.getpid(), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    try:
        _notify_socket[1].sendto(message.encode(), address)
    except OSError:
        pass  # the master may be gone; never fail the worker for it


def listen_sockets() -> dict[str, socket.socket]:
    """The listening sockets passed to this process (systemd's LISTEN_FDS convention, as orch
    passes its `[sockets.*]`), by name; empty when none were passed to *this* pid."""
    return dict(_passed_sockets(os.getpid()))


@functools.lru_cache(maxsize=None)
def _passed_sockets(pid: int) -> dict[str, socket.socket]:
    """One socket object per fd and process: a second object would close the fd when collected."""
    if os.environ.get("LISTEN_PID") != str(pid):
        return {}
    count = int(os.environ.get("LISTEN_FDS") or 0)
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    found = {}
    for i in range(count):
        fd = 3 + i
        os.set_inheritable(fd, False)  # the worker's own children must not hold it
        found[names[i] if i < len(names) and names[i] else f"fd{fd}"] = socket.socket(fileno=fd)
    return found


def load_target(target: str, pythonpath: list[str]) -> type[Worker]:
    """Import `module:Class` with the config's folder (and `pythonpath`) first on sys.path."""
    for entry in reversed(pythonpath):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in (attr or "Worker").split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Worker)):
        raise TypeError(f"{target} is not a subclass of orchestrator.worker.Worker")
    return obj


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.worker")
    parser.add_argument("--target", required=True, help="module:Class")
    parser.add_argument("--name", default="worker")
    parser.add_argument("--kwargs", default="{}", help="JSON object")
    parser.add_argument("--check-point", type=float, default=0.0, help="pause between run() calls")
    parser.add_argument("--pythonpath", action="append", default=[])
    return parser.parse_args(argv)


def _logger(name: str) -> logging.Logger:
    log = logging.getLogger(f"orch.worker.{name}")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)  # stdout is the instance's log, rotated by the master
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def serve(cls: type[Worker], args: argparse.Namespace) -> int:
    """The worker loop; returns the exit code."""
    set_title(f"orch: {args.name}")
    stopping = False
    wake_r, wake_w = wakeup_pair()

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    max_requests = int(os.environ.get("ORCH_MAX_REQUESTS") or 0)
    worker = cls(args.name, json.loads(args.kwargs), _logger(args.name))
    worker.init()
    notify("READY=1")
    handled = 0
    try:
        while not stopping:
            notify("ORCH_BEGIN=1")
            counted = bool(worker.run())
            notify("ORCH_END=1" if counted else "ORCH_IDLE=1")
            handled += counted
            if max_requests and handled >= max_requests:
                notify("ORCH_LIMIT=max_requests")
                break
            if args.check_point > 0 and not stopping:
                select.select([wake_r], [], [], args.check_point)  # a SIGTERM cuts the pause short
    finally:
        notify("STOPPING=1")
        worker.after_run()
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None, cls: type[Worker] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if cls is None:
        cls = load_target(args.target, args.pythonpath)
    return serve(cls, args)

