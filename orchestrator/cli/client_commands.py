"""The commands that ask a running master: diff, reload, status, down, start, stop,
restart, signal, inspect, logs and top (declared in commands.py)."""

from __future__ import annotations

import json
import os
import select
import sys
import time
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: 3-6 ms of every `orch` call
if TYPE_CHECKING:
    import argparse  # annotations only: its import is 5 ms of `orch status` (cli/quick.py)
    from typing import Any, Callable

from ..control.client import ControlError
from ..errors import OrchError
from .follow import LogFollower
from .link import ask, client_for, disk_error, log_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def cmd_diff(args: argparse.Namespace, path: Path) -> int:
    result = ask(args, path, "diff")
    for line in result["lines"]:
        print(line)
    print(f"{result['start']} to start, {result['stop']} to stop, {result['restart']} to restart, "
          f"{result['update']} updated in place, {result['keep']} unchanged")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace, path: Path) -> int:
    if args.patterns and not args.code:
        raise OrchError("orch reload takes instance patterns only with --code (the config is one whole)")
    if args.code:
        return _reload_code(args, path)
    result = ask(args, path, "reload")
    if result.get("queued"):
        print("reload queued behind the one being applied")
    elif not result.get("applied"):
        print(f"nothing to do: {result.get('reason', 'unchanged')}")
    else:
        print(f"applied: {result['start']} started, {result['stop']} stopped, {result['restart']} "
              f"restarted, {result['update']} updated in place, {result['keep']} unchanged")
        for note in result.get("settings", []):  # [orchestrator] changes, and what was not applied
            print(f"  {note}")
    return EXIT_OK


def _reload_code(args: argparse.Namespace, path: Path) -> int:
    """`orch reload --code`: returns once every rolled instance is ready on the new code
    (or, --no-wait, once the new code imported); an import error exits 2, a halted roll 1."""
    from .progress import follow
    client = client_for(args, path, timeout=None if not args.no_wait else 120.0)
    try:
        with follow(client.path, "moving onto the new code", "restarted", args.patterns or None):
            result = client.call("reload", code=True, patterns=args.patterns or None,
                                 wait=not args.no_wait, timeout=args.timeout)
    finally:
        client.close()
    if args.no_wait:
        print(f"new code imported: {result['rolling']} running instances of {result['instances']} roll onto it "
              "(orch status shows the progress)")
    else:
        print(f"new code imported: {result['rolling']} running instances of {result['instances']} rolled onto it")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, path: Path) -> int:
    if args.json:  # the master sends the very text to print, as raw bytes after its reply
        sys.stdout.flush()
        sys.stdout.buffer.write(_status_text(args, path))  # megabytes at 5,000 rows: not copied to add the newline
        sys.stdout.buffer.write(b"\n")
        return EXIT_OK
    from .status_view import render_status
    result = ask(args, path, "status", patterns=args.patterns or None)
    print(render_status(result, disk_error(Path(result.get("config") or path), result)))
    return EXIT_OK


def _status_text(args: argparse.Namespace, path: Path) -> bytes:
    client = client_for(args, path)
    try:
        return client.call_with_tail("status", patterns=args.patterns or None, text_tail=True)[1]
    except ControlError as exc:
        if "text_tail" not in str(exc):
            raise
        # a master of an older orch (not yet `orch upgrade`d) sends the text inside its reply
        return client.call("status", patterns=args.patterns or None, as_text=True)["instances_text"].encode()
    finally:
        client.close()


def _exit_watch(pid: int) -> int | None:
    """A pidfd of the master, or None if it is gone already (or not ours to watch)."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _ended(pidfd: int | None, timeout: float | None) -> bool:
    """Whether the process has exited within `timeout`: the master closes the control
    connection in its clean-up, a moment before the process itself is gone."""
    if pidfd is None:
        return True
    try:
        return bool(select.select([pidfd], [], [], None if timeout is None else max(0.0, timeout))[0])
    finally:
        os.close(pidfd)


def cmd_down(args: argparse.Namespace, path: Path) -> int:
    from .progress import follow
    client = client_for(args, path)
    try:
        with follow(client.path, "stopping every instance", "gone"):
            began = time.monotonic()
            result = client.call("down")
            exited = _exit_watch(result["pid"])  # opened while it still runs: never another process
            left = None if args.timeout is None else args.timeout - (time.monotonic() - began)
            closed = client.wait_closed(args.timeout) and _ended(exited, left)
        if not closed:
            print(f"orch: master {result['pid']} is still stopping after {args.timeout}s", file=sys.stderr)
            return EXIT_FAILED
    finally:
        client.close()
    print(f"master {result['pid']} and all its instances are gone")
    return EXIT_OK


GOALS = {"start": ("starting", "running"), "stop": ("stopping", "stopped"),
         "restart": ("restarting", "restarted")}


def control(action: str) -> Callable[[argparse.Namespace, Path], int]:
    def run(args: argparse.Namespace, path: Path) -> int:
        from .progress import follow
        extra: dict[str, Any] = {"rolling": True} if getattr(args, "rolling", False) else {}
        if not args.no_wait:
            extra.update(wait=True, timeout=args.timeout)
        client = client_for(args, path, timeout=None if not args.no_wait else 30.0)
        # The master answers when the work is done, or fails it at its own deadline; on a
        # terminal a progress line shows what it waits for meanwhile.
        try:
            with follow(client.path, GOALS[action][0], GOALS[action][1], args.patterns):
                names = client.call(action, patterns=args.patterns, **extra)
        finally:
            client.close()
        print(f"{action}: {', '.join(names)}")
        return EXIT_OK
    return run


def cmd_signal(args: argparse.Namespace, path: Path) -> int:
    result = ask(args, path, "signal", patterns=args.patterns, signal=args.signal)
    print(f"{result['signal']}: {', '.join(result['sent'])}"
          + (f" (not running: {', '.join(result['skipped'])})" if result["skipped"] else ""))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, path: Path) -> int:
    from .inspect_view import gather, render
    from .probe_view import probe_lines
    found = ask(args, path, "inspect", name=args.name)
    rows = gather(found["pids"])
    if args.json:
        print(json.dumps({"name": found["name"], "state": found["state"], "pid": found["pid"],
                          "ready": found.get("ready"), "waiting": found.get("waiting"),
                          "probes": found.get("probes"), "processes": rows}, indent=2))
    else:
        print("\n".join([render(found["name"], found["state"], rows)] + probe_lines(found.get("probes"))))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, path: Path) -> int:
    from ..observe.logs import instance_name, is_stderr_log, log_path, stderr_path
    import fnmatch
    folder = log_dir(path)
    files = [f for f in sorted(folder.glob("*.log")) if not is_stderr_log(f)]
    if args.patterns:
        chosen = []
        for pattern in args.patterns:
            exact = log_path(folder, pattern)
            matched = [exact] if exact.exists() else [
                f for f in files if fnmatch.fnmatchcase(instance_name(f), pattern)]
            if not matched:  # log files open on first output: ask the master for silent instances
                matched = [log_path(folder, name) for name in _instances(args, path, pattern)]
            if not matched:
                raise OrchError(f"no log matches {pattern!r} in {folder}")
            chosen += [m for m in matched if m not in chosen]
        files = chosen
    if args.stderr:  # the labels say which stream: NAME:stderr
        files = [stderr_path(f) for f in files if args.patterns or stderr_path(f).exists()]
    label = ":stderr" if args.stderr else ""
    followers = [LogFollower(f, instance_name(f) + label if len(files) > 1 else None) for f in files]
    for follower in followers:
        follower.tail(args.lines, keep_partial=args.follow)
    sys.stdout.flush()
    while args.follow:
        time.sleep(0.2)
        for follower in followers:
            follower.poll()
        sys.stdout.flush()
    return EXIT_OK


def _instances(args: argparse.Namespace, path: Path, pattern: str) -> list[str]:
    """Names of the running master's instances matching `pattern`; [] without a master."""
    try:
        rows = ask(args, path, "status", patterns=[pattern])["instances"]
    except (OrchError, ControlError, OSError):
        return []
    return [row["name"] for row in rows]


def cmd_top(args: argparse.Namespace, path: Path) -> int:
    from .top_screen import run_top, terminal_problem
    problem = terminal_problem()
    if problem:
        print(f"orch: top {problem}; for scripts use `orch status --json`", file=sys.stderr)
        return EXIT_USAGE
    if not 0.1 <= args.interval <= 3600:
        print("orch: top --interval must be between 0.1 and 3600 seconds", file=sys.stderr)
        return EXIT_USAGE
    client = client_for(args, path)  # no master (or another config's): exit 3 before the screen is taken
    client.close()
    return run_top(client.path, log_dir(path), tuple(args.patterns), args.interval)


cmd_start, cmd_stop, cmd_restart = control("start"), control("stop"), control("restart")
