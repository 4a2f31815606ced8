"""The man page and README stay in step with the CLI."""

from __future__ import annotations

import argparse
import re

import pytest

from conftest import ROOT, orch

from orchestrator.cli import COMMANDS, build_parser

MAN = (ROOT / "man" / "orch.1").read_text().replace("\\-", "-")
README = (ROOT / "README.md").read_text()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def test_every_command_and_option_is_in_the_man_page():
    parser = build_parser()
    missing: list[str] = []
    for name, sub in _subparsers(parser).items():
        if not re.search(rf"^\.B {name}\b", MAN, re.M):
            missing.append(f"command {name}")
        for option in _options(sub):
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", MAN):
                missing.append(f"{name} {option}")
    for option in _options(parser):
        if option not in MAN:
            missing.append(option)
    assert not missing, f"not in man/orch.1: {missing}"


def test_every_command_is_in_the_readme():
    for name in COMMANDS:
        assert re.search(rf"`orch {name}\b|orch start/stop/restart", README), name
        assert f"orch {name}" in README or name in ("start", "stop", "restart"), name


@pytest.mark.parametrize("name", COMMANDS)  # one test each, so xdist workers share them
def test_every_command_has_help_with_an_example(name):
    result = orch(name, "--help", timeout=20)
    assert result.returncode == 0 and "example: orch " in result.stdout, name


def test_version():
    result = orch("--version", timeout=20)
    assert result.returncode == 0 and result.stdout.startswith("orch ")


def test_every_config_key_is_in_the_man_page():
    from orchestrator.config.load import ORCHESTRATOR_KEYS, WORKER_KEYS
    for key in list(WORKER_KEYS) + list(ORCHESTRATOR_KEYS):
        assert re.search(rf"^{key} = ", MAN.split(".SH CONFIGURATION")[1], re.M) or \
            re.search(rf"{key} = ", MAN), key


def test_man_pages_hold_no_control_characters():
    """A stray form feed (a "\\f" font escape written unescaped in Python) breaks the page."""
    for page in (ROOT / "man").iterdir():
        bad = [(n, line) for n, line in enumerate(page.read_text().splitlines(), 1)
               if any(ord(c) < 32 and c != "\t" for c in line)]
        assert not bad, f"{page.name}: control characters on lines {[n for n, _ in bad][:5]}"
