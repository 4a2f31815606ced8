"""The generated fleet: identical instance lists for every tool, with /proc-visible tokens.

Every instance carries a token that appears as one argv word of its process (the sleep
duration for `/bin/sleep`, the `--name` / process title for Python workers), so the
benchmark finds it in /proc without asking the tool. A token is
`<prefix><tag:3><variant:1><index:5>`: the tag is new for every daemon launch, so a
leftover from an earlier launch never counts; the variant changes when a reload edits the
instance's command.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

SLEEP = "/bin/sleep"
SLEEP_PREFIX = "9"      # the token is the sleep duration: a 10-digit number of seconds
WORKER_PREFIX = "pw"    # Python worker (orch's `target`)
WRITER_PREFIX = "lw"    # log writer
TOKEN_RE = re.compile(r"^(?:9|pw|lw)(\d{3})(\d)(\d{5})$")

WORKER_MODULE = "benchworker"
WORKER_TARGET = f"{WORKER_MODULE}:BenchWorker"
READY_DIR = "ready"     # next to the config: each Python worker touches ready/<name> in init()

_tags = itertools.count(random.Random(os.getpid()).randrange(1000))


def next_tag() -> int:
    """A fresh 3-digit tag for the next daemon launch."""
    return next(_tags) % 1000


@dataclass(frozen=True)
class Instance:
    """One supervised process: the same name and command for every tool."""

    name: str
    token: str
    argv: tuple[str, ...] = ()
    target: str | None = None    # a Python worker (orch only) instead of argv
    preload: bool = False


@dataclass(frozen=True)
class Fleet:
    """The instances of one config file."""

    tag: int
    instances: tuple[Instance, ...]
    matrix: bool = False  # orch: one template with a matrix over the tokens, not a table each

    def tokens(self) -> dict[str, Instance]:
        return {inst.token: inst for inst in self.instances}

    def by_name(self) -> dict[str, Instance]:
        return {inst.name: inst for inst in self.instances}

    def with_instances(self, instances: list[Instance]) -> Fleet:
        return replace(self, instances=tuple(sorted(instances, key=lambda i: i.name)))


def token(prefix: str, tag: int, index: int, variant: int = 0) -> str:
    return f"{prefix}{tag:03d}{variant}{index:05d}"


def token_tag(word: str) -> int | None:
    """The tag of a token, or None when `word` is not one."""
    match = TOKEN_RE.match(word)
    return int(match.group(1)) if match else None


def sleep_instance(tag: int, index: int, variant: int = 0) -> Instance:
    tok = token(SLEEP_PREFIX, tag, index, variant)
    return Instance(name=f"s{index:05d}", token=tok, argv=(SLEEP, tok))


def sleep_fleet(n: int, tag: int | None = None) -> Fleet:
    """N instances of `/bin/sleep <token>`, each with its own argument."""
    tag = next_tag() if tag is None else tag
    return Fleet(tag, tuple(sleep_instance(tag, i) for i in range(n)))


def matrix_fleet(n: int) -> Fleet:
    """The sleep fleet as one template times a matrix (orch renders it so; the other tools,
    whose configs have no matrices, get the same instances as separate programs)."""
    return replace(sleep_fleet(n), matrix=True)


def change_one(fleet: Fleet, name: str) -> Fleet:
    """The fleet with one instance's command changed (its sleep argument)."""
    old = fleet.by_name()[name]
    index, variant = int(name[1:]), int(old.token[4])
    new = sleep_instance(fleet.tag, index, (variant + 1) % 10)
    return fleet.with_instances([new if i.name == name else i for i in fleet.instances])


def churn(fleet: Fleet, k: int) -> tuple[Fleet, list[str], list[str]]:
    """Remove k instances spread over the fleet and add k new ones: (fleet, removed, added)."""
    names = [i.name for i in fleet.instances]
    step = max(1, len(names) // k)
    removed = names[step // 2::step][:k]
    first_new = 1 + max(int(n[1:]) for n in names)
    added = [sleep_instance(fleet.tag, first_new + j) for j in range(k)]
    kept = [i for i in fleet.instances if i.name not in removed]
    return fleet.with_instances(kept + added), removed, [i.name for i in added]


def worker_fleet(n: int, preload: bool) -> Fleet:
    """N Python workers (orch `target`), each touching ready/<name> once init() ran."""
    tag = next_tag()
    return Fleet(tag, tuple(
        Instance(name=tok, token=tok, target=WORKER_TARGET, preload=preload)
        for tok in (token(WORKER_PREFIX, tag, i) for i in range(n))))


def writer_fleet(n: int, script: Path, bytes_per_second: int) -> Fleet:
    """N processes that each write `bytes_per_second` of log lines to stdout."""
    tag = next_tag()
    return Fleet(tag, tuple(
        Instance(name=tok, token=tok, argv=(sys.executable, "-S", str(script), tok, str(bytes_per_second)))
        for tok in (token(WRITER_PREFIX, tag, i) for i in range(n))))


WORKER_SOURCE = '''\
"""A Python worker for the preload benchmark: app-like imports, then idles."""
import asyncio, decimal, email.parser, http.client, json, sqlite3, xml.etree.ElementTree  # noqa
import logging.handlers, unittest, urllib.request, zipfile  # noqa
import os
import time
from pathlib import Path

from orchestrator.worker import Worker

READY = Path(__file__).resolve().parent / "ready"


class BenchWorker(Worker):
    def init(self):
        (READY / self.name).touch()

    def run(self):
        time.sleep(0.5)
        return False
'''

WRITER_SOURCE = '''\
"""Write log lines to stdout at a fixed byte rate: logwriter.py TOKEN BYTES_PER_SECOND."""
import os, sys, time
token, rate = sys.argv[1], int(sys.argv[2])
tick = 0.01
line = (token + " " + "x" * 88 + "\\n").encode()
chunk = line * max(1, int(rate * tick) // len(line))
deadline = time.monotonic()
while True:
    os.write(1, chunk)
    deadline += tick
    pause = deadline - time.monotonic()
    if pause > 0:
        time.sleep(pause)
'''
