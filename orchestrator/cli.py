"""`orch ...`: the command line. One `main()` maps error types to exit codes:
0 ok, 1 operation failed, 2 usage or config error, 3 no master running."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import find_config
from .control.record import live_record
from .control.client import ControlClient, ControlError
from .errors import ConfigError, NoMasterError, OrchError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_MASTER = 0, 1, 2, 3

COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("run the master in the foreground", "orch up -c workers.toml"),
    "check": ("validate the config and print a one-line summary", "orch check -c workers.toml"),
    "plan": ("print the expanded instances (or, with --diff, what a reload would do)",
             "orch plan --json | jq '.[].name'"),
    "diff": ("ask the running master what a reload of the current file would do", "orch diff"),
    "status": ("show every instance of the running master", "orch status 'consumer-*' --json"),
    "reload": ("re-read the config and apply only what changed", "orch reload -c workers.toml"),
    "down": ("stop every instance and the master; returns when all are gone", "orch down"),
    "start": ("start instances (names, globs or template:NAME); returns once they are up "
              "min_uptime or ready", "orch start template:consumer"),
    "stop": ("stop instances; they stay stopped across reloads; returns once they are gone",
             "orch stop 'consumer-10.0.0.2-*'"),
    "restart": ("restart instances; returns once the new processes are up min_uptime or ready",
                "orch restart --rolling template:consumer"),
    "signal": ("send a signal to the main process of instances", "orch signal HUP template:web"),
    "inspect": ("an instance's whole process tree: user, state, CPU, RSS/USS/PSS, threads, fds, sockets",
                "orch inspect web-1 --json"),
    "logs": ("print an instance's log (or every log), optionally following",
             "orch logs consumer-10.0.0.1-queue1 -f -n 50"),
    "export": ("write the fleet as systemd, supervisord, kubernetes, nomad or Procfile files",
               "orch export --format systemd -o units/"),
    "schema": ("print a JSON Schema of workers.toml (for editors)", "orch schema > workers.schema.json"),
    "queues": ("show the consumers' queues (ready, in flight, dead); `retry QUEUE` moves dead letters back",
               "orch queues retry queue1"),
    "top": ("a live full-screen view of the fleet (q quits)", "orch top template:consumer"),
}


# Commands that never talk to a master, so take no --socket.
OFFLINE = ("up", "check", "plan", "export", "schema", "queues")


def build_parser() -> argparse.ArgumentParser:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="config file (default: $ORCH_CONFIG, then ./workers.toml)")
    client = argparse.ArgumentParser(add_help=False, parents=[config])
    client.add_argument("--socket", default=argparse.SUPPRESS, metavar="PATH",
                        help="the master's control socket, whatever config it runs (default: "
                             "$ORCH_SOCKET, then the running master of the config, then its "
                             "control_socket)")
    parser = argparse.ArgumentParser(
        prog="orch", description="Declarative process orchestrator: templates x matrices, live reload by diff.",
        epilog="example: orch up -c configs/workers.toml", parents=[client])
    parser.add_argument("--version", action="version", version=f"orch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parsers = {}
    for name, (text, example) in COMMANDS.items():
        parsers[name] = sub.add_parser(name, help=text, description=text, epilog=f"example: {example}",
                                       parents=[config if name in OFFLINE else client])
    up = parsers["up"]
    up.add_argument("-q", "--quiet", action="store_true", help="do not echo children's output on stdout")
    up.add_argument("-d", "--detach", action="store_true",
                    help="run in the background (daemonize); returns once the master is listening")
    parsers["plan"].add_argument("--json", action="store_true", help="print a JSON list of instances")
    parsers["plan"].add_argument("--diff", action="store_true", help="same as `orch diff`")
    parsers["status"].add_argument("patterns", nargs="*", metavar="PATTERN")
    parsers["status"].add_argument("--json", action="store_true", help="print a JSON list of instances")
    for name in ("start", "stop", "restart"):
        parsers[name].add_argument("patterns", nargs="+", metavar="PATTERN")
        parsers[name].add_argument("--no-wait", action="store_true",
                                   help="return at once instead of when the work is done")
        parsers[name].add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                                   help="give up waiting after this long (exit 1); default: the "
                                        "instances' stop_timeout + min_uptime + 30s")
    parsers["signal"].add_argument("signal", metavar="SIGNAL", help="HUP, SIGUSR1, TTIN, 10, ...")
    parsers["signal"].add_argument("patterns", nargs="+", metavar="PATTERN")
    parsers["inspect"].add_argument("name", metavar="NAME", help="one instance's exact name")
    parsers["inspect"].add_argument("--json", action="store_true", help="print a JSON object")
    parsers["restart"].add_argument("--rolling", action="store_true",
                                    help="restart in batches of the template's max_unavailable")
    parsers["down"].add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                                 help="give up waiting after this long (exit 1)")
    logs = parsers["logs"]
    logs.add_argument("patterns", nargs="*", metavar="PATTERN")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=int, default=20, metavar="N", help="lines to show (default 20)")
    _export_options(parsers["export"])
    queues = parsers["queues"]
    queues.add_argument("action", nargs="?", choices=["retry"], help="retry: move QUEUE's dead letters back")
    queues.add_argument("queue", nargs="?", metavar="QUEUE")
    queues.add_argument("--json", action="store_true", help="print JSON")
    parsers["top"].add_argument("patterns", nargs="*", metavar="PATTERN")
    parsers["top"].add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                                help="seconds between refreshes (default 1)")
    return parser


def _export_options(export: argparse.ArgumentParser) -> None:
    export.add_argument("--format", required=True, metavar="FORMAT",
                        choices=("systemd", "supervisord", "kubernetes", "nomad", "procfile"),
                        help="systemd, supervisord, kubernetes, nomad or procfile")
    export.add_argument("-o", "--output", metavar="DIR", help="write files here (default: print them)")
    export.add_argument("--image", help="container image (kubernetes: required; nomad: docker driver)")
    export.add_argument("--python", help="interpreter on the target (kubernetes, nomad; default python3)")
    export.add_argument("--workdir", help="the config's folder on the target (kubernetes, nomad; "
                        "default /app)")


def main(argv: list[str] | None = None) -> int:
    if not sys.platform.startswith("linux"):  # prctl, /proc and subreapers are Linux's
        print(f"orch: needs Linux (this is {sys.platform}): it relies on prctl, /proc and "
              "child subreapers", file=sys.stderr)
        return EXIT_FAILED
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _bad_arguments(args)
    if problem:
        print(f"orch: {problem}", file=sys.stderr)
        return EXIT_USAGE
    path = find_config(getattr(args, "config", None))
    try:
        return HANDLERS[args.command](args, path)
    except ConfigError as exc:
        if "config" not in args and not os.environ.get("ORCH_CONFIG") and not os.path.lexists(path):
            print(f"orch: no {path.name} in {path.parent}: name the config with -c FILE "
                  "(or $ORCH_CONFIG)", file=sys.stderr)
        else:
            print(f"orch: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NoMasterError as exc:
        print(f"orch: {exc}", file=sys.stderr)
        return EXIT_NO_MASTER
    except ControlError as exc:
        print(f"orch: {exc}", file=sys.stderr)
        return exc.code
    except OrchError as exc:
        print(f"orch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _bad_arguments(args: argparse.Namespace) -> str | None:
    """What argparse's types let through but no command can use, as one line (exit 2)."""
    if "socket" in args and args.command in OFFLINE:  # `orch --socket X check`
        return f"{args.command} does not talk to a master: --socket is for client commands"
    timeout = getattr(args, "timeout", None)
    if timeout is not None and not (0 < timeout < math.inf):
        return f"--timeout must be a positive number of seconds, not {timeout:g}"
    if args.command == "logs" and args.lines < 0:
        return f"logs -n must be 0 or more lines, not {args.lines}"
    return None


def cmd_up(args: argparse.Namespace, path: Path) -> int:
    from .up import run_up
    return run_up(path, quiet=args.quiet, detach=args.detach)


def cmd_check(args: argparse.Namespace, path: Path) -> int:
    from .expand.render import check, summary  # Jinja: only the commands that render pay for it
    print(summary(*check(path)))
    return EXIT_OK


def cmd_plan(args: argparse.Namespace, path: Path) -> int:
    if args.diff:
        return cmd_diff(args, path)
    from .config.load import load_config
    from .expand.render import expand, summary
    config = load_config(path)
    specs = expand(config)
    if args.json:
        print(json.dumps([{
            "name": s.name, "template": s.template, "params": dict(s.params), "replica": s.replica,
            "argv": list(s.argv), "env": dict(s.env), "cwd": s.cwd, "hash": s.process_hash,
            "policy_hash": s.policy_hash,
        } for s in specs], indent=2, default=str))
        return EXIT_OK
    width = max([len(s.name) for s in specs] + [4])
    print(f"{'NAME':<{width}}  {'HASH':<16}  COMMAND")
    for s in specs:
        print(f"{s.name:<{width}}  {s.process_hash:<16}  {' '.join(_quote(a) for a in s.argv)}")
    print(summary(config, specs))
    return EXIT_OK


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


def _client(args: argparse.Namespace, path: Path, timeout: float | None = 30.0) -> ControlClient:
    """A connection to the master of `path`, found without parsing the file when it can:
    `--socket`, $ORCH_SOCKET, the record a running master wrote for this config, then the
    file. Unless the socket was named (`--socket`, or $ORCH_SOCKET without `-c`), the master
    must run `path`: another config's master refuses the command (exit 3)."""
    record = None
    if "socket" in args:
        socket, check = Path(args.socket).absolute(), False
    elif os.environ.get("ORCH_SOCKET"):
        socket, check = Path(os.environ["ORCH_SOCKET"]).absolute(), "config" in args
    else:
        record, check = live_record(path), True
        if record is not None:
            socket = Path(record["socket"])
        else:
            from .config.load import load_settings  # only without a record: imports the parser
            socket = load_settings(path).control_socket
    client = ControlClient(socket, timeout)
    try:
        if check:
            _check_master(client, path, record)
    except BaseException:
        client.close()
        raise
    return client


def _check_master(client: ControlClient, path: Path, record: dict | None) -> None:
    """Raise NoMasterError unless the master on `client` runs `path`, asked on the same
    connection (a master short of fds may pause its accepts). A ping answered by the pid
    that wrote `path`'s record settles it; otherwise its status names its config."""
    pid = client.call("ping")["pid"]
    if record is not None and record.get("pid") == pid:
        return
    theirs = client.call("status", as_text=True).get("config")
    if theirs is None or os.path.realpath(theirs) != os.path.realpath(path):
        raise NoMasterError(f"the master at {client.path} (pid {pid}) runs {theirs}, not {path}: "
                            "name its config with -c, or pass --socket to use it anyway")


def _ask(args: argparse.Namespace, path: Path, cmd: str, **kwargs: Any) -> Any:
    """One request to the master of `path` (see `_client`)."""
    client = _client(args, path)
    try:
        return client.call(cmd, **kwargs)
    finally:
        client.close()


def _log_dir(path: Path) -> Path:
    record = live_record(path)
    if record is not None:
        return Path(record["log_dir"])
    from .config.load import load_settings
    return load_settings(path).log_dir


def _disk_error(path: Path, reply: dict | None = None) -> str | None:
    """Why the config on disk would not load now (None when it would). When the files on
    disk are the ones the master last read (same digest), its verdict stands: no parse."""
    from .config.load import load_config
    if reply is not None and reply.get("sources_digest"):
        from .control.saves import sources_digest
        if sources_digest(reply.get("sources", []), reply.get("include", [])) == reply["sources_digest"]:
            return reply.get("last_reload_error")
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return None


def cmd_diff(args: argparse.Namespace, path: Path) -> int:
    result = _ask(args, path, "diff")
    for line in result["lines"]:
        print(line)
    print(f"{result['start']} to start, {result['stop']} to stop, {result['restart']} to restart, "
          f"{result['update']} updated in place, {result['keep']} unchanged")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace, path: Path) -> int:
    result = _ask(args, path, "reload")
    if result.get("queued"):
        print("reload queued behind the one being applied")
    elif not result.get("applied"):
        print(f"nothing to do: {result.get('reason', 'unchanged')}")
    else:
        print(f"applied: {result['start']} started, {result['stop']} stopped, {result['restart']} "
              f"restarted, {result['update']} updated in place, {result['keep']} unchanged")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, path: Path) -> int:
    from .observe.status_view import render_status
    if args.json:  # the master sends the very text to print
        print(_ask(args, path, "status", patterns=args.patterns or None, as_text=True)["instances_text"])
        return EXIT_OK
    result = _ask(args, path, "status", patterns=args.patterns or None)
    print(render_status(result, _disk_error(Path(result.get("config") or path), result)))
    return EXIT_OK


def cmd_down(args: argparse.Namespace, path: Path) -> int:
    from .observe.progress import follow
    client = _client(args, path)
    try:
        with follow(client.path, "stopping every instance", "gone"):
            result = client.call("down")
            closed = client.wait_closed(args.timeout)
        if not closed:
            print(f"orch: master {result['pid']} is still stopping after {args.timeout}s", file=sys.stderr)
            return EXIT_FAILED
    finally:
        client.close()
    print(f"master {result['pid']} and all its instances are gone")
    return EXIT_OK


GOALS = {"start": ("starting", "running"), "stop": ("stopping", "stopped"),
         "restart": ("restarting", "restarted")}


def _control(action: str) -> Callable[[argparse.Namespace, Path], int]:
    def run(args: argparse.Namespace, path: Path) -> int:
        from .observe.progress import follow
        extra: dict[str, Any] = {"rolling": True} if getattr(args, "rolling", False) else {}
        if not args.no_wait:
            extra.update(wait=True, timeout=args.timeout)
        client = _client(args, path, timeout=None if not args.no_wait else 30.0)
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
    result = _ask(args, path, "signal", patterns=args.patterns, signal=args.signal)
    print(f"{result['signal']}: {', '.join(result['sent'])}"
          + (f" (not running: {', '.join(result['skipped'])})" if result["skipped"] else ""))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, path: Path) -> int:
    from .observe.inspect_view import gather, render
    found = _ask(args, path, "inspect", name=args.name)
    rows = gather(found["pids"])
    if args.json:
        print(json.dumps({"name": found["name"], "state": found["state"], "pid": found["pid"],
                          "processes": rows}, indent=2))
    else:
        print(render(found["name"], found["state"], rows))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, path: Path) -> int:
    from .observe.logs import instance_name, log_path
    import fnmatch
    log_dir = _log_dir(path)
    files = sorted(log_dir.glob("*.log"))
    if args.patterns:
        chosen = []
        for pattern in args.patterns:
            exact = log_path(log_dir, pattern)
            matched = [exact] if exact.exists() else [
                f for f in files if fnmatch.fnmatchcase(instance_name(f), pattern)]
            if not matched:  # log files open on first output: ask the master for silent instances
                matched = [log_path(log_dir, name) for name in _instances(args, path, pattern)]
            if not matched:
                raise OrchError(f"no log matches {pattern!r} in {log_dir}")
            chosen += [m for m in matched if m not in chosen]
        files = chosen
    followers = [_LogFollower(f, instance_name(f) if len(files) > 1 else None) for f in files]
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
        rows = _ask(args, path, "status", patterns=[pattern])["instances"]
    except (OrchError, ControlError, OSError):
        return []
    return [row["name"] for row in rows]


class _LogFollower:
    """One instance log for `orch logs`: its tail, then (with -f) whatever is appended, across
    rotations: the rotated-away file is read to its end before the new one is started, and a
    line is printed only once its newline has arrived."""

    def __init__(self, path: Path, label: str | None):
        self.path = path
        self.label = label
        self.handle: Any = None
        self.inode: int | None = None
        self.pending = b""
        self._open()

    def _open(self) -> bool:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return False
        self.handle = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        return True

    def _print(self, lines: list[bytes]) -> None:
        for raw in lines:
            line = raw.decode(errors="replace")
            print(f"{self.label} | {line}" if self.label else line)

    def _end(self, count: int) -> bytes:
        """Enough of the file's end for `count` lines, read backwards in growing blocks (a
        50 MiB log is not read whole); leaves the handle at the end, for following."""
        size = os.fstat(self.handle.fileno()).st_size
        block = 64 * 1024
        while True:
            start = max(0, size - block)
            self.handle.seek(start)
            data = self.handle.read(size - start)
            if start == 0 or data.count(b"\n") > count:
                break
            block *= 4
        return data if start == 0 else data[data.index(b"\n") + 1:]  # drop the cut first line

    def tail(self, count: int, keep_partial: bool) -> None:
        data = self._end(max(count, 0)) if self.handle is not None else b""
        lines = data.split(b"\n")
        last = lines.pop()  # b"" after a final newline, else a line still being written
        if last and not keep_partial:
            lines.append(last)
        elif last:
            self.pending = last
        self._print(lines[-count:] if count > 0 else [])

    def poll(self) -> None:
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = None  # renamed away, not recreated yet: the old file may still grow
        data = self.handle.read() if self.handle is not None else b""
        if current is not None and current != self.inode:
            # Rotated: the master no longer writes to the old file, so what was just read
            # was its end. Continue at the start of the new one.
            if self.handle is not None:
                self.handle.close()
                self.handle = None
            if self._open():
                data += self.handle.read()
        elif self.handle is not None and os.fstat(self.handle.fileno()).st_size < self.handle.tell():
            self.handle.seek(0)  # truncated in place
            data += self.handle.read()
        if not data:
            return
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        self._print(lines)


def cmd_export(args: argparse.Namespace, path: Path) -> int:
    from .export import run
    if args.format == "kubernetes" and not args.image:
        print("orch: export --format kubernetes needs --image IMAGE", file=sys.stderr)
        return EXIT_USAGE
    return run(args.format, path, Path(args.output) if args.output else None, args.image,
               args.python, args.workdir)


def cmd_schema(args: argparse.Namespace, path: Path) -> int:
    from .config.schema import render
    sys.stdout.write(render())
    return EXIT_OK


def cmd_queues(args: argparse.Namespace, path: Path) -> int:
    from .queues.inspect import run_queues  # redis / greenstalk: only this command pays for them
    return run_queues(path, args.action, args.queue, args.json)
def cmd_top(args: argparse.Namespace, path: Path) -> int:
    from .observe.top_screen import run_top, terminal_problem
    problem = terminal_problem()
    if problem:
        print(f"orch: top {problem}; for scripts use `orch status --json`", file=sys.stderr)
        return EXIT_USAGE
    if not 0.1 <= args.interval <= 3600:
        print("orch: top --interval must be between 0.1 and 3600 seconds", file=sys.stderr)
        return EXIT_USAGE
    client = _client(args, path)  # no master (or another config's): exit 3 before the screen is taken
    client.close()
    return run_top(client.path, _log_dir(path), tuple(args.patterns), args.interval)


HANDLERS: dict[str, Callable[[argparse.Namespace, Path], int]] = {
    "up": cmd_up, "check": cmd_check, "plan": cmd_plan, "diff": cmd_diff, "status": cmd_status,
    "reload": cmd_reload, "down": cmd_down, "start": _control("start"), "stop": _control("stop"),
    "restart": _control("restart"), "signal": cmd_signal, "inspect": cmd_inspect, "logs": cmd_logs,
    "export": cmd_export,
    "schema": cmd_schema, "queues": cmd_queues, "top": cmd_top,
}
