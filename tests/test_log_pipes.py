"""The cheap log path: output pipes read in batches (observe/pipes.py) and rotation that never
cuts a line across two files (observe/logs.py LogFile)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_for
from orchestrator.loop import EventLoop
from orchestrator.observe.logs import LogFile
from orchestrator.observe.pipes import BATCH, OutputPump


def chain(path: Path) -> list[Path]:
    """The rotated files oldest first, then the current one."""
    backups = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return backups + [path]


@pytest.mark.parametrize("chunks, max_size", [
    ([b"aaaa\nbb", b"bb\ncccc\nddd", b"d\n"], 8),               # a chunk ends mid-line at each turn
    ([b"one\n", b"two\nthree\nfour\nfive\n"], 10),             # a chunk over a file's worth
    ([b"x" * 30, b"yy\nzz\n"], 16),                              # a line longer than a file
    ([b"a\n" * 7, b"b" * 5, b"b\nc\n"], 16),                     # whole lines that fit stay in the old file
    ([b"12345678", b"9\n", b"tail"], 8),                         # the last line still being written
])
def test_rotation_never_cuts_a_line_across_two_files(tmp_path, chunks, max_size):
    path = tmp_path / "w.log"
    logfile = LogFile(path, max_size, 50)
    for chunk in chunks:
        logfile.write(chunk)
    logfile.close()
    files = chain(path)
    assert len(files) > 1, "the case must rotate"
    assert b"".join(p.read_bytes() for p in files) == b"".join(chunks), "nothing lost, nothing doubled"
    for older in files[:-1]:
        assert older.read_bytes().endswith(b"\n"), f"{older.name} ends mid-line: {older.read_bytes()!r}"
    longest = max(len(line) + 1 for line in b"".join(chunks).split(b"\n"))
    for older in files[:-1]:
        assert len(older.read_bytes()) <= max(max_size, longest) + longest, older.name


def run_until(loop: EventLoop, done, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        loop.run_once(0.01)


WRITER = """
import os, sys, time
line = lambda i: ("%08d " % i + "y" * 91 + "\\n").encode()
i = 0
for burst in range(40):          # 40 bursts of 10 kB, each 5 ms apart, cut mid-line
    chunk = b"".join(line(i + k) for k in range(100))
    os.write(1, chunk[:4321]); os.write(1, chunk[4321:])
    i += 100
    time.sleep(0.005)
"""


def test_a_chatty_pipe_is_read_in_few_large_reads_and_nothing_is_lost():
    loop = EventLoop()
    pump = OutputPump(loop)
    got: list[bytes] = []
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    pump.add(read_end, got.append)
    child = subprocess.Popen([sys.executable, "-c", WRITER], stdout=write_end)
    os.close(write_end)
    try:
        run_until(loop, lambda: len(pump) == 0, 20)  # read to EOF and closed
    finally:
        child.kill()
        child.wait()
    data = b"".join(got)
    numbers = [int(line.split()[0]) for line in data.splitlines()]
    assert numbers == list(range(4000)), "every line, in order"
    assert len(got) <= 80 * 2 // 3, f"{len(got)} reads for 80 writes: not batched"
    with pytest.raises(OSError):
        os.fstat(read_end)  # closed at EOF


def test_a_quiet_line_is_written_at_once_and_a_full_pipe_grows():
    loop = EventLoop()
    pump = OutputPump(loop)
    got: list[tuple[float, bytes]] = []
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    pump.add(read_end, lambda data: got.append((time.monotonic(), data)))
    try:
        sent = time.monotonic()
        os.write(write_end, b"hello\n")
        run_until(loop, lambda: got, 2)
        assert got[0][1] == b"hello\n" and got[0][0] - sent < BATCH, "a first line waits for no timer"
        run_until(loop, lambda: not pump._paused, 2)  # found empty: back on the selector
        os.write(write_end, b"z" * 40000)  # more than half the default 64 KiB
        run_until(loop, lambda: sum(len(d) for _, d in got) >= 40006, 2)
        assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) == 1 << 20, "the pipe was grown"
        os.write(write_end, b"x" * 900_000)  # fits at once now: the writer does not block
        run_until(loop, lambda: sum(len(d) for _, d in got) >= 940006, 2)
    finally:
        os.close(write_end)
        run_until(loop, lambda: len(pump) == 0, 2)


def test_drain_hands_on_what_a_paused_pipe_holds():
    loop = EventLoop()
    pump = OutputPump(loop, batch=60.0)  # a timer that will not fire within the test
    got: list[bytes] = []
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    pump.add(read_end, got.append)
    os.write(write_end, b"first\n")
    run_until(loop, lambda: got, 2)
    os.write(write_end, b"last words\n")
    loop.run_once(0.05)
    assert got == [b"first\n"], "paused: the second line waits for the timer"
    pump.drain()
    assert got == [b"first\n", b"last words\n"]
    os.close(write_end)
    wait_for(lambda: (pump.drain(), len(pump) == 0)[1], 2, message="EOF closes the pipe")


def test_drain_of_one_owner_reads_only_its_pipes():
    """What the launcher does when an instance ends, before the journal and hooks see it."""
    loop = EventLoop()
    pump = OutputPump(loop, batch=60.0)
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    ends = {}
    for owner in ("a", "b"):
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        pump.add(read_end, got[owner].append, owner)
        ends[owner] = write_end
        os.write(write_end, b"first\n")
    run_until(loop, lambda: got["a"] and got["b"], 2)
    for owner in ("a", "b"):
        os.write(ends[owner], b"last\n")
    os.close(ends["a"])
    pump.drain("a")
    assert got["a"] == [b"first\n", b"last\n"] and got["b"] == [b"first\n"]
    assert len(pump) == 1, "a's pipe reached EOF and was closed"
    os.close(ends["b"])
    pump.drain()
    assert got["b"] == [b"first\n", b"last\n"] and len(pump) == 0
