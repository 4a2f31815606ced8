"""Every `orch` command, declared once: its name, one-line help, an example, its arguments
and its handler. The parser, `orch --help`, the man page's command list and the README's
command table come from these records (tests/test_man.py keeps the pages in step).

Handlers are named as "module:function" and imported only when their command runs, so
`orch status` never pays for Jinja, redis-py or curses."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..export import FORMATS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: 3-6 ms of every `orch` call
if TYPE_CHECKING:
    from typing import Any


class Arg:
    """One argument: add_argument's names and keywords."""

    __slots__ = ("names", "options")

    def __init__(self, names: tuple[str, ...], options: dict[str, Any]) -> None:
        self.names, self.options = names, options


def arg(*names: str, **options: Any) -> Arg:
    return Arg(names, options)


class Command:
    """One command of the CLI (a plain class: a NamedTuple would import typing)."""

    __slots__ = ("name", "help", "example", "handler", "args", "offline")

    def __init__(self, name: str, help: str, example: str, handler: str, args: tuple[Arg, ...] = (),
                 offline: bool = False) -> None:
        self.name, self.help, self.example = name, help, example
        self.handler = handler  # "module:function", relative to this package
        self.args = args
        self.offline = offline  # asks no master, so takes no --socket

    def run(self, args: argparse.Namespace, path: Any) -> int:
        module, function = self.handler.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)(args, path)


PATTERNS = arg("patterns", nargs="*", metavar="PATTERN")
SOME_PATTERNS = arg("patterns", nargs="+", metavar="PATTERN")
JSON_LIST = arg("--json", action="store_true", help="print a JSON list of instances")


def _waiting(*extra: Arg) -> tuple[Arg, ...]:
    return (SOME_PATTERNS,
            arg("--no-wait", action="store_true", help="return at once instead of when the work is done"),
            arg("--timeout", type=float, default=None, metavar="SECONDS",
                help="give up waiting after this long (exit 1); default: the instances' "
                     "stop_timeout + min_uptime + 30s"), *extra)


COMMAND_LIST: tuple[Command, ...] = (
    Command("up", "run the master in the foreground", "orch up -c workers.toml", "local_commands:cmd_up", (
        arg("-q", "--quiet", action="store_true", help="do not echo children's output on stdout"),
        arg("-d", "--detach", action="store_true",
            help="run in the background (daemonize); returns once the master is listening"),
        arg("--fresh", action="store_true",
            help="start every instance, also those `orch stop` left stopped before the last master ended")),
        offline=True),
    Command("check", "validate the config and print a one-line summary", "orch check -c workers.toml",
            "local_commands:cmd_check", offline=True),
    Command("plan", "print the expanded instances (or, with --diff, what a reload would do)",
            "orch plan --json | jq '.[].name'", "local_commands:cmd_plan", (
                arg("--json", action="store_true", help="print a JSON list of instances"),
                arg("--diff", action="store_true", help="same as `orch diff`")), offline=True),
    Command("diff", "ask the running master what a reload of the current file would do", "orch diff",
            "client_commands:cmd_diff"),
    Command("status", "show every instance of the running master", "orch status 'consumer-*' --json",
            "client_commands:cmd_status", (PATTERNS, JSON_LIST)),
    Command("reload", "re-read the config and apply only what changed; --code: give preloaded instances "
            "the code on disk now, rolling", "orch reload --code template:consumer", "client_commands:cmd_reload", (
                arg("--code", action="store_true",
                    help="start fresh zygotes with the code on disk and roll the preloaded instances (all, or "
                         "those PATTERN names) onto them; an import error moves nothing"), PATTERNS,
                arg("--no-wait", action="store_true",
                    help="with --code: return once the new code imported, not once every instance runs it"),
                arg("--timeout", type=float, default=None, metavar="SECONDS",
                    help="with --code: give up waiting after this long (exit 1)"))),
    Command("upgrade", "re-execute the master (same pid) into the orch installed now; every instance "
            "keeps running", "orch upgrade --check", "upgrade:cmd_upgrade", (
                arg("--check", action="store_true", help="only prove the new code can take over: it "
                                                         "imports orch, loads the config, reads the state"),)),
    Command("down", "stop every instance and the master; returns when all are gone", "orch down",
            "client_commands:cmd_down", (arg("--timeout", type=float, default=None, metavar="SECONDS",
                                             help="give up waiting after this long (exit 1)"),)),
    Command("start", "start instances (names, globs or template:NAME); returns once they are up "
            "min_uptime or ready", "orch start template:consumer", "client_commands:cmd_start", _waiting()),
    Command("stop", "stop instances; they stay stopped across reloads; returns once they are gone",
            "orch stop 'consumer-10.0.0.2-*'", "client_commands:cmd_stop", _waiting()),
    Command("restart", "restart instances; returns once the new processes are up min_uptime or ready",
            "orch restart --rolling template:consumer", "client_commands:cmd_restart",
            _waiting(arg("--rolling", action="store_true", help="restart in batches of the template's "
                                                                 "max_unavailable"))),
    Command("signal", "send a signal to the main process of instances", "orch signal HUP template:web",
            "client_commands:cmd_signal", (arg("signal", metavar="SIGNAL", help="HUP, SIGUSR1, TTIN, 10, ..."),
                                           SOME_PATTERNS)),
    Command("inspect", "an instance's whole process tree: user, state, CPU, RSS/USS/PSS, threads, fds, "
            "sockets", "orch inspect web-1 --json", "client_commands:cmd_inspect", (
                arg("name", metavar="NAME", help="one instance's exact name"),
                arg("--json", action="store_true", help="print a JSON object"))),
    Command("logs", "print an instance's log (or every log), optionally following",
            "orch logs consumer-10.0.0.1-queue1 -f -n 50", "client_commands:cmd_logs", (
                PATTERNS, arg("-f", "--follow", action="store_true", help="keep printing new lines"),
                arg("-n", "--lines", type=int, default=20, metavar="N", help="lines to show (default 20)"),
                arg("--stderr", action="store_true",
                    help='the separate stderr log (stderr = "separate") instead of the output log'))),
    Command("events", "the fleet's recent events (state changes, exits, limits, probe failures, reloads), "
            "a line each; -f follows", "orch events -f --json template:consumer", "events_view:cmd_events", (
                PATTERNS, arg("-f", "--follow", action="store_true",
                              help="keep printing new events until interrupted"),
                arg("--json", action="store_true", help="one JSON object per line"),
                arg("-n", "--lines", type=int, default=None, metavar="N",
                    help="show only the last N events first (default: all kept, up to 1,000)"))),
    Command("export", f"write the fleet as {', '.join(FORMATS[:-1])} or {FORMATS[-1]} files",
            "orch export --format systemd -o units/", "local_commands:cmd_export", (
                arg("--format", required=True, metavar="FORMAT", choices=FORMATS, help=", ".join(FORMATS)),
                arg("-o", "--output", metavar="DIR", help="write files here (default: print them)"),
                arg("--image", help="container image (kubernetes: required; nomad: docker driver)"),
                arg("--python", help="interpreter on the target (kubernetes, nomad; default python3)"),
                arg("--workdir", help="the config's folder on the target (kubernetes, nomad; default /app)")),
            offline=True),
    Command("schema", "print a JSON Schema of workers.toml (for editors)", "orch schema > workers.schema.json",
            "local_commands:cmd_schema", offline=True),
    Command("queues", "show the consumers' queues (ready, in flight, dead); `retry QUEUE` moves dead "
            "letters back", "orch queues retry queue1", "local_commands:cmd_queues", (
                arg("action", nargs="?", choices=["retry"], help="retry: move QUEUE's dead letters back"),
                arg("queue", nargs="?", metavar="QUEUE"), arg("--json", action="store_true", help="print JSON")),
            offline=True),
    Command("dashboard", "print the web dashboard's address, token included, to open in a browser",
            "orch dashboard", "dashboard:cmd_dashboard",
            (arg("--json", action="store_true", help="print the address and the token file as JSON"),)),
    Command("scale", "pin an autoscaled template's (or one cell's) replicas at N until `orch scale --auto`; "
            "alone, show each cell: replicas, bounds, backlog, last decision", "orch scale consumer 4",
            "scale_view:cmd_scale", (
                arg("target", nargs="?", metavar="TEMPLATE|CELL"),
                arg("count", nargs="?", type=int, metavar="N"),
                arg("--auto", action="store_true", help="follow the backlog again"),
                arg("--json", action="store_true", help="print JSON"))),
    Command("top", "a live full-screen view of the fleet (q quits)", "orch top template:consumer",
            "client_commands:cmd_top", (PATTERNS, arg("--interval", type=float, default=1.0, metavar="SECONDS",
                                                       help="seconds between refreshes (default 1)"))),
)
COMMANDS: dict[str, Command] = {c.name: c for c in COMMAND_LIST}
OFFLINE = tuple(c.name for c in COMMAND_LIST if c.offline)


def command_in(argv: list[str]) -> str | None:
    """The command `argv` names, found without parsing (the word after the global options),
    or None: then the whole parser is built, for `--help` and the error of a wrong name."""
    values = False  # the word after -c / --config / --socket is their value
    for word in argv:
        if values:
            values = False
        elif word in ("-c", "--config", "--socket"):
            values = True
        elif word in ("-h", "--help", "--version", "--"):
            return None
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized as shutil would size it but without importing shutil,
    which brings bz2 and lzma: argparse makes a formatter for every argument it adds, so
    that import was 5-7 ms of every `orch` call, help or not."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


def _columns() -> int:
    """The terminal's width: $COLUMNS, then stdout's terminal, then 80 (shutil.get_terminal_size)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser, from COMMAND_LIST; with `only`, the global options and that one command:
    all the subparsers cost 6.5 ms of every call, one costs 0.9 ms."""
    config = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    config.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="config file (default: $ORCH_CONFIG, then ./workers.toml)")
    client = argparse.ArgumentParser(add_help=False, parents=[config], formatter_class=_Formatter)
    client.add_argument("--socket", default=argparse.SUPPRESS, metavar="PATH",
                        help="the master's control socket, whatever config it runs (default: "
                             "$ORCH_SOCKET, then the running master of the config, then its "
                             "control_socket)")
    parser = argparse.ArgumentParser(
        prog="orch", description="Declarative process orchestrator: templates x matrices, live reload by diff.",
        epilog="example: orch up -c configs/workers.toml", parents=[client], formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"orch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMAND_LIST if only is None else (COMMANDS[only],):
        one = sub.add_parser(command.name, help=command.help, description=command.help,
                             epilog=f"example: {command.example}", parents=[config if command.offline else client],
                             formatter_class=_Formatter)
        for argument in command.args:
            one.add_argument(*argument.names, **argument.options)
    return parser
