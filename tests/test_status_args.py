"""`orch status`'s command line read without argparse (cli/quick.py) is what argparse reads,
or is left to argparse: on a table of shapes and on generated command lines."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from orchestrator.cli.commands import build_parser, command_in
from orchestrator.cli.quick import status_args


def _argparse(words: list[str]) -> dict | None:
    """What main() gets from argparse for `words`, or None when argparse refuses them."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(build_parser(command_in(words)).parse_args(words))
    except SystemExit:
        return None


TAKEN = [["status"], ["status", "--json"], ["status", "-c", "w.toml", "--json"], ["-c", "w.toml", "status", "--json"],
         ["status", "a", "b*", "--json"], ["status", "--json", "template:web"], ["--socket", "s", "status"],
         ["-c", "x", "status", "-c", "y"], ["status", "--socket", "s", "web"], ["status", "status"], ["status", ""],
         ["--config", "w.toml", "status", "--json", "--json"]]
LEFT = [[], ["status", "a", "--json", "b"], ["status", "a", "-c", "x", "b"], ["status", "--", "a"], ["status", "-h"],
        ["--json", "status"], ["status", "-c"], ["status", "-c", "-x"], ["status", "--config=x"], ["-cx", "status"],
        ["top"], ["status", "--jso"], ["--version"], ["status", "-1"]]


def test_the_usual_shapes_are_read_as_argparse_reads_them():
    for words in TAKEN:
        quick = status_args(words)
        assert quick is not None, words
        assert vars(quick) == _argparse(words), words
        assert ("config" in quick) == ("-c" in words or "--config" in words), words
    for words in LEFT:
        assert status_args(words) is None, words


WORDS = st.sampled_from(["status", "--json", "-c", "--config", "--socket", "w.toml", "web", "a*", "--", "-h", "-x", ""])


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(WORDS, max_size=3), st.lists(WORDS, max_size=5))
def test_a_command_line_read_without_argparse_is_read_as_argparse_reads_it(before, after):
    words = before + ["status"] + after  # around the command word, where both readers have work
    quick = status_args(words)
    if quick is not None:
        assert vars(quick) == _argparse(words), words


def test_orch_status_imports_neither_argparse_nor_the_command_table(tmp_path):
    config = tmp_path / "workers.toml"
    config.write_text('[orchestrator]\ncontrol_socket = "none.sock"\n[workers.x]\ncommand = "sleep 1"\n')
    code = ("import sys; from orchestrator.cli import main; code = main(['status', '--json', '-c', sys.argv[1]]); "
            "print(code, sorted(m for m in ('argparse', 'orchestrator.cli.commands') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=30)
    assert done.stdout.split(None, 1) == ["3", "[]\n"], (done.stdout, done.stderr)  # no master: exit 3
    assert "no orch master is running" in done.stderr
