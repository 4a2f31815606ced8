"""Probes and start order in exports (issue 27): Kubernetes probes, systemd notify types and
After=/Requires=, Nomad checks, one line per template for what a target cannot carry; and
the validators (kubernetes-validate --strict, systemd-analyze verify, Nomad's documented job
structure) still pass with them."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from export_cases import options_of, specs_of, write
from test_export import NOMAD_JOB
from test_export_run import _export, _kubernetes_validate, _tool, _verify_units
from orchestrator.export import export

CONFIG = f'''
[orchestrator]
name = "probed"

[workers.redis]
command = ["redis-server", "--port", "{{{{ 7000 + replica }}}}"]
replicas = 2
probes.readiness = {{ tcp = "127.0.0.1:{{{{ 7000 + replica }}}}", period = "2s", failures = 2 }}
probes.liveness = {{ exec = ["redis-cli", "-p", "{{{{ 7000 + replica }}}}", "ping"], period = "10s", timeout = "3s", failures = 3 }}

[workers.migrate]
command = ["{sys.executable}", "-c", "pass"]
restart = "never"

[workers.web]
command = ["{sys.executable}", "-m", "http.server", "{{{{ 9000 + replica }}}}"]
replicas = 2
after = ["redis", "migrate"]
probes.startup = {{ http = "http://127.0.0.1:{{{{ 9000 + replica }}}}/health", period = "1s", failures = 30 }}
probes.readiness = {{ http = "http://127.0.0.1:{{{{ 9000 + replica }}}}/", period = "0.5s", successes = 2, status = 200 }}
probes.liveness = {{ tcp = "127.0.0.1:{{{{ 9000 + replica }}}}", period = "10s", failures = 3 }}

[workers.notifier]
command = ["{sys.executable}", "-c", "pass"]
after = ["web"]
probes.startup = {{ notify = true, period = "1s", failures = 60 }}
probes.liveness = {{ notify = "watchdog", period = "5s", failures = 2 }}
'''


@pytest.fixture
def probed(tmp_path: Path) -> Path:
    return write(tmp_path / "probed", CONFIG)


def _out(fmt: str, config: Path, **kw: object):
    return export(fmt, specs_of(config), options_of(config, **kw))


def _documents(text: str) -> list[dict]:
    import yaml
    return [d for d in yaml.safe_load_all(text) if d]


def test_kubernetes_probes_map_one_to_one(probed: Path) -> None:
    out = _out("kubernetes", probed, image="img:1")
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
            for d in _documents(out.files["kubernetes.yaml"]) if d["kind"] == "Deployment"}
    assert pods["redis-1"]["readinessProbe"] == {"tcpSocket": {"port": 7001}, "periodSeconds": 2, "timeoutSeconds": 1,
                                                 "failureThreshold": 2, "successThreshold": 1}
    assert pods["redis-1"]["livenessProbe"]["exec"] == {"command": ["redis-cli", "-p", "7001", "ping"]}
    assert pods["redis-1"]["livenessProbe"]["timeoutSeconds"] == 3
    web = pods["web"]
    assert web["startupProbe"]["httpGet"] == {"path": "/health", "port": 9000} and web["startupProbe"]["failureThreshold"] == 30
    assert web["readinessProbe"]["periodSeconds"] == 1 and web["readinessProbe"]["successThreshold"] == 2
    assert "readinessProbe" not in pods["notifier"] and "livenessProbe" not in pods["notifier"]
    lines = [w for w in out.warnings if "cannot carry" in w]
    assert len(lines) == 2, lines  # one line per template that loses something
    web_line = next(w for w in lines if "workers.web:" in w)
    assert "after = redis, migrate" in web_line and "probes.*.status" in web_line and "rounded up" in web_line
    assert "probes startup (notify), liveness (notify)" in next(w for w in lines if "workers.notifier:" in w)


def test_systemd_orders_units_and_carries_notify_probes(probed: Path) -> None:
    out = _out("systemd", probed)
    web = out.files["orch-probed-web.service"]
    for unit in ("orch-probed-redis.service", "orch-probed-redis\\x2d1.service", "orch-probed-migrate.service"):
        assert f"After={unit}\nRequires={unit}" in web
    assert "Type=oneshot\nRemainAfterExit=yes" in out.files["orch-probed-migrate.service"]  # After= waits for its exit
    notifier = out.files["orch-probed-notifier.service"]
    assert "Type=notify\nNotifyAccess=all\nWatchdogSec=10\nTimeoutStartSec=60" in notifier
    assert "After=orch-probed-web.service" in notifier and "After=orch-probed-web\\x2d1.service" in notifier
    assert "Type=exec" in out.files["orch-probed-redis.service"]
    lost = [w for w in out.warnings if "cannot carry" in w]
    assert sorted(w.split(":")[1].strip() for w in lost) == ["systemd cannot carry workers.redis",
                                                             "systemd cannot carry workers.web"], lost


def test_nomad_checks(probed: Path) -> None:
    out = _out("nomad", probed)
    groups = {g["Name"]: g for g in json.loads(next(iter(out.files.values())))["Job"]["TaskGroups"]}
    (service,) = groups["redis-1"]["Services"]
    assert service["Provider"] == "consul"  # a script check is Consul's
    ready, live = service["Checks"]
    assert (ready["Type"], ready["PortLabel"], ready["FailuresBeforeCritical"]) == ("tcp", "probe7001", 2)
    assert (live["Type"], live["Command"], live["Args"], live["TaskName"]) == ("script", "redis-cli", ["-p", "7001", "ping"], "redis")
    assert live["CheckRestart"] == {"Limit": 3, "Grace": 0, "IgnoreWarnings": False} and live["Timeout"] == 3 * 10**9
    assert groups["redis-1"]["Networks"] == [{"ReservedPorts": [{"Label": "probe7001", "Value": 7001}]}]
    (service,) = groups["web"]["Services"]
    startup, ready, live = service["Checks"]
    assert service["Provider"] == "nomad" and (startup["Type"], startup["Path"]) == ("http", "/health")
    assert live["CheckRestart"]["Grace"] == 30 * 10**9  # the startup probe's period x failures
    assert "Services" not in groups["notifier"] and "Services" not in groups["migrate"]
    assert len([w for w in out.warnings if "cannot carry" in w]) == 2


@pytest.mark.parametrize("fmt,target", [("supervisord", "supervisord"), ("procfile", "a Procfile")])
def test_supervisord_and_procfile_say_in_one_line_per_template(probed: Path, fmt: str, target: str) -> None:
    out = _out(fmt, probed)
    lines = [w for w in out.warnings if "cannot carry" in w]
    assert [w.split(": ")[1] for w in lines] == [f"{target} cannot carry workers.{t}" for t in ("notifier", "redis", "web")]
    assert "after = redis, migrate" in lines[2] and "probes startup (http), readiness (http), liveness (tcp)" in lines[2]


# --- the validators ----------------------------------------------------------------------------

NOMAD_WITH_CHECKS = copy.deepcopy(NOMAD_JOB)
_CHECK = {"type": "object", "additionalProperties": False, "required": ["Name", "Type", "Interval", "Timeout"],
          "properties": {"Name": {"type": "string"}, "Type": {"enum": ["http", "tcp", "script"]},
                         "Path": {"type": "string"}, "PortLabel": {"type": "string"},
                         "Interval": {"type": "integer", "minimum": 10**9}, "Timeout": {"type": "integer", "minimum": 10**9},
                         "Command": {"type": "string"}, "Args": {"type": "array", "items": {"type": "string"}},
                         "TaskName": {"type": "string"}, "SuccessBeforePassing": {"type": "integer"},
                         "FailuresBeforeCritical": {"type": "integer"},
                         "CheckRestart": {"type": "object", "additionalProperties": False,
                                          "properties": {"Limit": {"type": "integer"}, "Grace": {"type": "integer"},
                                                         "IgnoreWarnings": {"type": "boolean"}}}}}
_GROUP = NOMAD_WITH_CHECKS["properties"]["Job"]["properties"]["TaskGroups"]["items"]["properties"]
_GROUP["Services"] = {"type": "array", "items": {
    "type": "object", "additionalProperties": False, "required": ["Name", "Provider", "Checks"],
    "properties": {"Name": {"type": "string"}, "Provider": {"enum": ["nomad", "consul"]},
                   "PortLabel": {"type": "string"}, "Checks": {"type": "array", "items": _CHECK}}}}
_GROUP["Networks"] = {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
    "ReservedPorts": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                 "properties": {"Label": {"type": "string"}, "Value": {"type": "integer"}}}}}}}


def test_nomad_job_with_checks_has_the_documented_structure(probed: Path) -> None:
    import jsonschema
    document = json.loads(next(iter(_out("nomad", probed).files.values())))
    jsonschema.validate(document, NOMAD_WITH_CHECKS)
    broken = copy.deepcopy(document)
    broken["Job"]["TaskGroups"][0]["Services"][0]["Checks"][0]["Type"] = "grpc-ish"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, NOMAD_WITH_CHECKS)


@pytest.mark.slow  # kubernetes-validate and systemd-analyze take seconds each
def test_validators_pass_with_probes_and_after(probed: Path, tmp_path: Path) -> None:
    _export(probed, "kubernetes", tmp_path / "k8s", "--image", "registry.example/app:1")
    report = _kubernetes_validate(tmp_path / "k8s" / "kubernetes.yaml")
    assert report.count("passed") == 6, report
    _export(probed, "systemd", tmp_path / "units")
    _verify_units(tmp_path / "units")


def test_an_exec_probe_names_no_path_of_this_machine(tmp_path: Path) -> None:
    here = tmp_path / "here"
    config = write(here, '[workers.w]\ncommand = "{{ python }} -c pass"\n'
                   f'probes.liveness = {{ exec = ["{{{{ python }}}}", "{here}/check.py"] }}\n')
    out = _out("kubernetes", config, image="img:1")
    pod = next(d for d in _documents(out.files["kubernetes.yaml"]) if d["kind"] == "Deployment")
    assert pod["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"] == \
        ["python3", "/app/check.py"]


def test_systemd_carries_only_a_liveness_watchdog(tmp_path: Path) -> None:
    config = write(tmp_path / "beat", '[workers.w]\ncommand = "sleep 1"\n'
                   'probes.readiness = { notify = "watchdog", period = "2s", failures = 1 }\n')
    out = _out("systemd", config)
    unit = next(text for name, text in out.files.items() if name.endswith("-w.service"))
    assert "WatchdogSec" not in unit and "Type=exec" in unit
    assert any('readiness notify = "watchdog"' in w and "workers.w:" in w for w in out.warnings), out.warnings
