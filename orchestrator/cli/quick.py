"""`orch status`'s command line read without argparse: the status a script or a dashboard asks
for again and again pays neither argparse's import (with gettext and locale) nor its parser.

Measured on the 2-core session machine (load 20-40, `python -X importtime`, min of 12):
argparse 2.4 ms + gettext 1.1 + locale 1.3 + the command table 0.8 + building and running
the parser ~1 ms, of an `orch status --json` whose own imports were 15 ms. Only the shapes
argparse reads the same way are taken here (tests/test_status_args.py holds them equal on a
table and on generated command lines); anything else, `--help` and every mistake included,
goes to argparse, which parses it or says what is wrong."""

from __future__ import annotations

OPTIONS = {"-c": "config", "--config": "config", "--socket": "socket"}  # each takes the next word


class Args:
    """What the status handler reads of argparse's Namespace: attributes, and `in` for the
    options that were given (argparse leaves out -c and --socket when they are not)."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __repr__(self) -> str:
        return f"Args({self.__dict__!r})"


def status_args(words: list[str]) -> Args | None:
    """`[-c FILE] [--socket PATH] status [PATTERN...] [--json] [-c FILE] [--socket PATH]` as
    argparse reads it (the patterns one run of words, options on either side), or None."""
    values: dict[str, object] = {}
    patterns: list[str] = []
    command, ended = False, False  # ended: an option came after the patterns (argparse refuses more)
    at = 0
    while at < len(words):
        word = words[at]
        if word in OPTIONS:
            if at + 1 == len(words) or words[at + 1].startswith("-"):
                return None
            values[OPTIONS[word]] = words[at + 1]
            ended = bool(patterns)
            at += 2
            continue
        if not command:
            if word != "status":
                return None
            command = True
        elif word == "--json":
            values["json"] = True
            ended = bool(patterns)
        elif word.startswith("-") or ended:
            return None
        else:
            patterns.append(word)
        at += 1
    if not command:
        return None
    return Args(command="status", patterns=patterns, json=values.pop("json", False), **values)
