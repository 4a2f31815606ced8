"""Issue 29's list of events, each seen through `orch events --json` (the CLI, not only the
control command): a state change, a limit action, a probe failure, a reload applied and
refused, and a scaling step, from one real master. (Exits with a code and with a signal,
and the spawner's replacement, are followed end to end in test_events.py.)"""

from __future__ import annotations

import json

import pytest

from conftest import orch, wait_for

KINDS = """
[workers.calm]
command = ["sleep", "1000"]

[workers.aged]
command = ["sleep", "1000"]
max_lifetime = "1s"
stop_timeout = "1s"

[workers.sick]
command = ["sleep", "1000"]
probes = {{ liveness = {{ exec = ["false"], period = "0.2s", failures = 100 }} }}

[workers.cell]
command = ["sleep", "1000"]
replicas = {{ min = 0, max = 2 }}
backlog = {{ command = ["cat", "{backlog}"], per = 1 }}
scale = {{ up_after = "0.2s", down_after = "0.5s", step = 2 }}
stop_timeout = "1s"
"""


def _cli_events(master) -> list[dict]:
    result = orch("events", "--json", "-c", str(master.config), timeout=20)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_kind_of_the_issue_reaches_orch_events_json(start_master, tmp_path):
    backlog = tmp_path / "backlog"
    backlog.write_text("2\n")
    text = KINDS.format(backlog=backlog)
    master = start_master(text)
    kinds = lambda: {e["kind"] for e in master.call("events")["events"]}  # noqa: E731 - cheap polling
    wait_for(lambda: {"limit", "probe_failed", "scaled"} <= kinds(), 15, message="a limit, a probe failure, a scale")
    master.call("stop", patterns=["calm"], wait=True)
    master.write(text + '\n[workers.more]\ncommand = ["sleep", "1000"]\n')
    master.call("reload")
    master.write(text + "\n[workers.bad]\ncommand = 3\n")
    with pytest.raises(RuntimeError):
        master.call("reload")
    events = _cli_events(master)
    by_kind: dict[str, list[dict]] = {}
    for e in events:
        by_kind.setdefault(e["kind"], []).append(e)
        assert e["ts"] > 0 and isinstance(e["seq"], int), e
    state = [(e["old"], e["new"]) for e in by_kind["state"] if e["instance"] == "calm"]
    assert ("stopped", "starting") in state and ("running", "stopping") in state, state
    limit = by_kind["limit"][0]
    assert (limit["instance"], limit["limit"], limit["action"]) == ("aged", "max_lifetime", "graceful restart")
    assert limit["value"], limit
    probe = by_kind["probe_failed"][0]
    assert (probe["instance"], probe["probe"], probe["check"]) == ("sick", "liveness", "exec") and probe["error"]
    scaled = by_kind["scaled"][0]
    assert (scaled["template"], scaled["before"], scaled["after"]) == ("cell", 0, 2) and scaled["reason"], scaled
    applied = [e for e in by_kind["reload"] if e.get("start") == 1]
    assert applied and applied[-1]["instance"] is None and applied[-1]["origin"], by_kind["reload"]
    refused = by_kind["reload_failed"][-1]
    assert "workers.toml:" in refused["error"] and "workers.bad.command" in refused["error"], refused
