"""orch processes run without the cyclic GC while they import and set up (cli/__init__.py):
a command that is over in moments keeps it off, the views that run until interrupted and the
master once it serves have it on (the master's metrics say so)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request

import pytest

from servers import free_port

RUN = textwrap.dedent("""
    import gc, sys
    sys.argv = ["orch", *sys.argv[1:]]
    from orchestrator.cli import main
    code = main()
    print("gc", gc.isenabled(), "code", code)
""")


def _main_in_process(*words: str) -> str:
    """`orch WORDS` run as the process's own command line, then whether GC is on."""
    done = subprocess.run([sys.executable, "-c", RUN, *words], capture_output=True, text=True, timeout=60)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr


def _gauge(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


@pytest.mark.slow
def test_gc_is_off_for_a_short_command_and_on_for_a_view_and_a_serving_master(start_master):
    port = free_port()
    master = start_master(f"""
        [orchestrator]
        metrics = "127.0.0.1:{port}"

        [workers.s]
        command = "sleep 600"
    """)
    master.wait_running(1)
    assert _main_in_process("check", "-c", str(master.config)) == "gc False code 0"
    assert _main_in_process("events", "-c", str(master.config)).endswith("gc True code 0")
    assert _gauge(port, "orch_master_gc_enabled") == 1
    assert _gauge(port, "orch_master_gc_collections_total") >= 0
