"""`orch ...`: the command line. Commands are declared once, in commands.py; `main()` parses,
runs one, and maps error types to exit codes: 0 ok, 1 operation failed, 2 usage or config
error, 3 no master running. The views a command prints (status, inspect, top, progress)
live beside it in this package."""

from __future__ import annotations

import gc
import os
import sys
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import argparse
    from pathlib import Path

from ..config import find_config
from ..control.client import ControlError
from ..errors import ConfigError, NoMasterError, OrchError
from .quick import Args, status_args

DECLARATIONS = ("COMMANDS", "OFFLINE", "build_parser", "command_in")  # commands.py's, imported when asked

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_MASTER = 0, 1, 2, 3
# An `orch` process runs without the cyclic garbage collector while it imports and sets up:
# imports allocate hundreds of thousands of objects and the collector walked them again and
# again, 20-25 % of the CPU of `python -c "import orchestrator.master"` (0.22 -> 0.17 s, min of
# 10, load 0.5); a perf profile of the whole test suite, where thousands of `orch` processes
# start, put 8 % of their CPU in gc_collect_main and its visitors. A command that is over in
# moments keeps it off (its garbage goes with the process); the master turns it back on, with
# everything so far frozen, when it starts serving (master.py: run), the spawner likewise;
# the views that run until interrupted turn it back on at once.
GC_ON = frozenset({"top", "logs", "events"})
ENDS_AT_ONCE = frozenset({"status"})  # commands whose process may skip the interpreter's teardown


def main(argv: list[str] | None = None) -> int:
    if not sys.platform.startswith("linux"):  # prctl, /proc and subreapers are Linux's
        print(f"orch: needs Linux (this is {sys.platform}): it relies on prctl, /proc and "
              "child subreapers", file=sys.stderr)
        return EXIT_FAILED
    words = sys.argv[1:] if argv is None else argv
    if argv is None:  # the process's own command line: no cyclic GC while it imports (see GC_ON)
        gc.disable()
    args = status_args(words)  # `orch status` without argparse (cli/quick.py), else argparse
    if args is None:
        from .commands import build_parser, command_in
        args = build_parser(command_in(words)).parse_args(words)
    if args.command in GC_ON:
        gc.enable()
    problem = None if isinstance(args, Args) else _bad_arguments(args)
    if problem:
        print(f"orch: {problem}", file=sys.stderr)
        return EXIT_USAGE
    path = find_config(getattr(args, "config", None))
    code = _run(args, path)
    if argv is None and args.command in ENDS_AT_ONCE:  # the process's own command line: `orch status`
        end_now(code)
    return code


def end_now(code: int) -> None:
    """Flush what was printed and end the process without the interpreter's teardown (a
    final garbage collection and every module's dict cleared one object at a time): for
    `orch status` that teardown was 10-25 ms of CPU (load 10-40; min of 8 straces: 10 ms)
    of a 60-100 ms call, for nothing a reader of its output sees. Only for commands in
    ENDS_AT_ONCE, whose work is done once they return: no thread, no atexit handler, no
    file but stdout and stderr."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`orch status --json | head -1`): as main() does
        pass
    try:
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(code)


def __getattr__(name: str) -> object:
    """The CLI's declarations (commands.py), imported on first use: `orch status` needs none."""
    if name in DECLARATIONS:
        from . import commands
        return getattr(commands, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _run(args: argparse.Namespace | Args, path: Path) -> int:
    """The command, its errors mapped to exit codes and one line on stderr."""
    try:
        if isinstance(args, Args):  # read by cli/quick.py: the handler commands.py names for status
            from .client_commands import cmd_status
            return cmd_status(args, path)  # type: ignore[arg-type]
        from .commands import COMMANDS
        return COMMANDS[args.command].run(args, path)
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
    import math
    from .commands import OFFLINE
    if "socket" in args and args.command in OFFLINE:  # `orch --socket X check`
        return f"{args.command} does not talk to a master: --socket is for client commands"
    timeout = getattr(args, "timeout", None)
    if timeout is not None and not (0 < timeout < math.inf):
        return f"--timeout must be a positive number of seconds, not {timeout:g}"
    if args.command in ("logs", "events") and args.lines is not None and args.lines < 0:
        return f"{args.command} -n must be 0 or more lines, not {args.lines}"
    return None
