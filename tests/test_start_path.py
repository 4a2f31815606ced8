"""The start path at the machine's limit (issue 31): a new master's spawns leave in chunks
while it sets up the rest, the kept /proc files open once a burst is quiet, and the CLI
builds only the parser of the command it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from orchestrator.cli.commands import build_parser, command_in
from orchestrator.plan import Plan
from orchestrator.procfs import TRACK_QUIET, TreeSampler
from orchestrator.supervise.applying import CHUNK, FIRST_CHUNK, apply_first


class Recorder:
    """Just what apply_plan needs of a supervisor, logging starts and flushes in order."""

    def __init__(self) -> None:
        self.instances: dict[str, SimpleNamespace] = {}
        self.events = None
        self.log: list[str] = []

    def _new_instance(self, spec):
        return SimpleNamespace(name=spec.name, held=False)

    def start(self, inst) -> None:
        self.log.append(inst.name)

    def flush(self) -> None:
        self.log.append("|")


def test_a_first_plan_is_sent_in_chunks_of_64_then_256():
    sup = Recorder()
    specs = tuple(SimpleNamespace(name=f"w{i}") for i in range(1000))
    apply_first(sup, Plan(start=specs), (), sup.flush)
    chunks = [len(part.split()) for part in " ".join(sup.log).split("|")[:-1]]
    assert chunks == [FIRST_CHUNK, CHUNK, CHUNK, CHUNK, 1000 - FIRST_CHUNK - 3 * CHUNK]
    assert [name for name in sup.log if name != "|"] == [s.name for s in specs]  # order kept
    assert sup.log[-1] == "|"


def test_a_small_first_plan_is_one_chunk_and_held_ones_are_not_started():
    sup = Recorder()
    specs = tuple(SimpleNamespace(name=f"w{i}") for i in range(3))
    apply_first(sup, Plan(start=specs), {"w1"}, sup.flush)
    assert sup.log == ["w0", "w2", "|"] and sup.instances["w1"].held


class FakeTimers:
    def __init__(self) -> None:
        self.due: list = []

    def call_later(self, delay: float, callback) -> None:
        self.due.append((delay, callback))

    def run(self) -> None:
        due, self.due = self.due, []
        for _, callback in due:
            callback()


def test_kept_proc_files_open_after_the_burst_and_only_for_live_pids():
    kids = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    sampler, timers = TreeSampler(), FakeTimers()
    live = {kid.pid for kid in kids[:2]}  # the third exited meanwhile: never opened
    try:
        for kid in kids:
            sampler.track_later(kid.pid, timers.call_later, live.__contains__)
        assert len(timers.due) == 1 and timers.due[0][0] == TRACK_QUIET  # one timer per burst
        assert not sampler._fds, "nothing opened during the burst"
        sampler._last_pending = float("inf")  # a spawn came just now: the timer waits again
        timers.run()
        assert not sampler._fds and len(timers.due) == 1
        sampler._last_pending = 0.0
        timers.run()
        assert set(sampler._fds) == live and not timers.due
        assert sampler.usage(kids[0].pid)[0] > 0
    finally:
        sampler.close()
        for kid in kids:
            kid.kill()
            kid.wait()


def test_the_cli_builds_only_the_named_commands_parser():
    assert command_in(["-c", "status", "status", "--json"]) == "status"
    assert command_in(["--socket", "/x", "reload"]) == "reload"
    assert command_in(["--help", "status"]) is None and command_in(["bogus"]) is None
    assert command_in([]) is None
    args = build_parser("status").parse_args(["-c", "w.toml", "status", "--json"])
    assert args.command == "status" and args.json and args.config == "w.toml"
    assert "upgrade" not in build_parser("status").format_help()
    assert "upgrade" in build_parser().format_help()


def test_a_wrong_command_still_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "orchestrator", "bogus"], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "ORCH_CONFIG": "/nonexistent.toml"})
    assert out.returncode == 2
    assert "invalid choice: 'bogus'" in out.stderr and "'status'" in out.stderr and "'top'" in out.stderr
