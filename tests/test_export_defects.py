"""Issue 23: the distribution's name in every install hint."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

import pytest
from conftest import ROOT

import orchestrator
from orchestrator.queues import beanstalkd, redis as redis_queue
from orchestrator.queues.base import ConsumerConfigError

DIST = "orch-fleet"  # free on the package index; `orch` and `orchestrator` are other projects
HINT = re.compile(r"pip install '?([A-Za-z0-9_.-]+)\[")


def test_the_distribution_is_orch_fleet_and_installed_under_that_name():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DIST
    assert project["scripts"]["orch"] == "orchestrator.cli:main"
    assert importlib.metadata.version(DIST) == orchestrator.__version__


def test_every_install_hint_names_the_distribution():
    texts = {p: p.read_text() for p in [ROOT / "README.md", *(ROOT / "man").iterdir(),
                                        *(ROOT / "orchestrator").rglob("*.py")]}
    hints = {(p.name, m.group(1)) for p, text in texts.items()
             for m in HINT.finditer(text.replace("\\-", "-"))}
    assert {name for _, name in hints} - {"."} == {DIST}, hints
    assert {"redis.py", "beanstalkd.py", "README.md"} <= {file for file, _ in hints}
    assert f"{DIST}[redis]" in texts[ROOT / "man" / "orch.1"].replace("\\-", "-")


@pytest.mark.parametrize("module, opener, args", [
    (redis_queue, "open_redis", ("redis://127.0.0.1:1",)),
    (beanstalkd, "open_client", ("beanstalk://127.0.0.1:1", "t", 1.0)),
], ids=["redis", "beanstalkd"])
def test_a_missing_client_library_names_the_extra_to_install(module, opener, args, monkeypatch):
    monkeypatch.setattr(module, "redis_py" if module is redis_queue else "greenstalk", None)
    with pytest.raises(ConsumerConfigError, match=rf"pip install '{DIST}\["):
        getattr(module, opener)(*args)
