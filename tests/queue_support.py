"""Shared by the tests/test_queues_*.py files: a handler module written into tmp_path (the
config's folder is on the worker's pythonpath) that logs each start and finish of a message
with pid and time, and behaves by the message's prefix."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Callable

import psutil

HANDLERS = '''
import os, time
HERE = os.path.dirname(os.path.abspath(__file__))
LOG = os.path.join(HERE, "events.log")

def _event(kind, m):
    line = "%s %d %.6f %s\\n" % (kind, os.getpid(), time.time(), m.decode("utf-8", "replace"))
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one O_APPEND write per line: never interleaved
    finally:
        os.close(fd)

def _first(m):
    """True on the first attempt at m (a marker file per message)."""
    marker = os.path.join(HERE, "seen-" + m.decode().replace("/", "_").replace(":", "_"))
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False

def handle(m):
    kind, _, rest = m.partition(b":")
    # The first-attempt marker is made before "start" is logged: a test that kills the
    # consumer on seeing "start" must never kill it before the marker exists.
    first = kind in (b"slowfirst", b"hang", b"mem") and _first(m)
    _event("start", m)
    if kind == b"poison":
        raise RuntimeError("poison message " + m.decode())
    if kind == b"sleep":                      # sleep:SECONDS:id
        time.sleep(float(rest.split(b":")[0]))
    if kind == b"slowfirst" and first:    # slowfirst:SECONDS:id, quick on later attempts
        time.sleep(float(rest.split(b":")[0]))
    if kind == b"hang" and first:         # hang:id hangs on its first attempt
        time.sleep(3600)
    if kind == b"mem" and first:          # mem:id grows past any sane limit, first attempt
        hog = [bytearray(16 << 20) for _ in range(30)]
        time.sleep(3600)
    _event("done", m)
'''


def consumer_config(target: str, axis: str, values: list[str], source: str, *, replicas: int = 1,
                    preload: bool = True, kwargs: str = "", extra: str = "", stop_timeout: str = "2s") -> str:
    """A `workers.toml` of one consumer template over the matrix axis `axis`, with fast
    backoff and checks for tests; `source` is the kwargs that name the server and queue,
    `kwargs` more of them (", key = value" each), `extra` more template keys."""
    return f"""
    [orchestrator]
    check_interval = "0.2s"
    [workers.consumer]
    target = "{target}"
    matrix = {{ {axis} = {json.dumps(values)} }}
    replicas = {replicas}
    preload = {str(preload).lower()}
    backoff = {{ initial = "0.05s", max = "0.5s" }}
    min_uptime = "0s"
    stop_timeout = "{stop_timeout}"
    kwargs = {{ {source}, handler = "handlers:handle"{kwargs} }}
    {extra}
    """


def write_handlers(folder: Path) -> Path:
    """Write handlers.py into `folder`; returns the events log path."""
    (folder / "handlers.py").write_text(HANDLERS)
    return folder / "events.log"


class Events:
    """The handler's event log, parsed: (kind, pid, time, message) tuples."""

    def __init__(self, path: Path):
        self.path = path

    def all(self) -> list[tuple[str, int, float, str]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        rows = []
        for line in text.splitlines():
            kind, pid, when, message = line.split(" ", 3)
            rows.append((kind, int(pid), float(when), message))
        return rows

    def done(self) -> set[str]:
        return {m for kind, _, _, m in self.all() if kind == "done"}

    def starts(self, message: str) -> list[tuple[int, float]]:
        return [(pid, when) for kind, pid, when, m in self.all() if kind == "start" and m == message]

    def counts(self, kind: str) -> collections.Counter:
        return collections.Counter(m for k, _, _, m in self.all() if k == kind)


def redis_leftovers(client, queues: list[str]) -> dict[str, int]:
    """Every non-empty queue, processing list and delayed set of `queues` (should be none)."""
    left: dict[str, int] = {}
    for queue in queues:
        for key in [queue, f"{queue}:delayed", *client.keys(f"{queue}:processing:*")]:
            size = client.zcard(key) if key in (f"{queue}:delayed", f"{queue}:delayed".encode()) \
                else client.llen(key)
            if size:
                left[key if isinstance(key, str) else key.decode()] = size
    return left


def chaos_kill(master, rng: random.Random, zygotes: bool) -> bool:
    """SIGKILL one random running consumer (and, sometimes, the zygote it was forked from);
    False when no consumer was ready to be killed."""
    # Only consumers past init() (READY=1): on a loaded machine, killing ones still starting
    # would only measure interpreter start-up.
    running = [r["pid"] for r in master.status().values()
               if r["pid"] and r["state"] == "running" and r.get("ready")]
    if not running:
        return False
    pid = rng.choice(running)
    try:
        parent = psutil.Process(pid).parent()
    except psutil.NoSuchProcess:
        return False
    if zygotes and parent is not None and parent.pid != master.pid and rng.random() < 0.2:
        try:
            parent.kill()  # the preload zygote: its children must survive it or be restarted
        except psutil.NoSuchProcess:
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def chaos(master, done: Callable[[], bool], zygotes: bool, seed: int, batches: list[Callable[[], None]],
          seconds: float = 20.0) -> int:
    """Random SIGKILLs every 50-300 ms while the producer sends one batch after each, until
    every batch is out and `done()`, or `seconds` pass; returns the kill count. Callers then
    wait (without kills) for the rest: a lost message never turns up."""
    rng = random.Random(seed)
    kills = 0
    pending = list(batches)
    deadline = time.monotonic() + seconds
    while (pending or not done()) and time.monotonic() < deadline:
        if pending:
            pending.pop(0)()
        time.sleep(rng.uniform(0.05, 0.3))
        chaos_kill(master, rng, zygotes)
        kills += 1
    for batch in pending:
        batch()
    return kills


def batches_of(messages: list[str], count: int, send: Callable[[list[str]], None]) -> list[Callable[[], None]]:
    """`messages` cut into `count` batches, each a call that sends it."""
    size = -(-len(messages) // count)
    return [lambda part=messages[i:i + size]: send(part) for i in range(0, len(messages), size)]


def started_at(pid: int) -> float:
    """When `pid` started, as time.time(), to 10 ms (psutil's create_time() leans on the
    whole-second boot time, so it can be up to a second early)."""
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
    since_boot = ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
