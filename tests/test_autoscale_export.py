"""Autoscaled templates past one machine: a KEDA ScaledObject per cell for Kubernetes, checked
against KEDA's published CRD schema (tests/data/keda.sh_scaledobjects.yaml, vendored with its
source noted), and a Nomad Scaling block; beanstalkd has no KEDA scaler and says so."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import yaml

from conftest import ROOT, orch

CRD = ROOT / "tests" / "data" / "keda.sh_scaledobjects.yaml"

CONFIG = """
[workers.consumer]
target = "orchestrator.queues.redis:QueueConsumer"
matrix = { queue = ["q1", "q2"] }
replicas = { min = 0, max = 3, backlog = 10 }
scale = { up_after = "5s", down_after = "90s", step = 3 }
kwargs = { url = "redis://10.0.0.5:6379/2", queue = "{{ queue }}", handler = "app:handle" }

[workers.events]
target = "orchestrator.queues.redis_stream:StreamConsumer"
replicas = { min = 1, max = 4, backlog = 50 }
kwargs = { url = "redis://10.0.0.5:6379/0", stream = "orders", group = "billing", handler = "app:handle" }

[workers.jobs]
target = "orchestrator.queues.beanstalkd:QueueConsumer"
replicas = { min = 1, max = 2, backlog = 50 }
kwargs = { url = "beanstalk://10.0.0.5", tube = "mail", handler = "app:handle" }

[workers.web]
command = "app serve"
replicas = 2
"""


def strict(schema: dict) -> dict:
    """The CRD's schema as `kubectl --validate=strict` reads it: an object with declared
    properties takes no other field (the API server would prune it silently)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def keda_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


def export(tmp_path: Path, fmt: str, *extra: str):
    config = tmp_path / "workers.toml"
    config.write_text(textwrap.dedent(CONFIG))
    out = orch("export", "--format", fmt, "-c", str(config), *extra)
    assert out.returncode == 0, out.stderr
    return out


def test_each_redis_cell_gets_a_scaled_object_keda_accepts(tmp_path):
    out = export(tmp_path, "kubernetes", "--image", "registry.example/app:1")
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(scaled) == {"consumer-q1", "consumer-q2", "events"}
    validator = keda_validator()
    for doc in scaled.values():
        errors = sorted(validator.iter_errors(doc), key=str)
        assert not errors, [e.message for e in errors]
        assert doc["spec"]["scaleTargetRef"]["name"] in deployments
    q1 = scaled["consumer-q1"]["spec"]
    assert (q1["minReplicaCount"], q1["maxReplicaCount"]) == (0, 3)
    assert q1["triggers"] == [{"type": "redis", "metadata": {"address": "10.0.0.5:6379", "databaseIndex": "2",
                                                              "listName": "q1", "listLength": "10"}}]
    behavior = q1["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 5
    assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 3, "periodSeconds": 1}]
    stream = scaled["events"]["spec"]["triggers"][0]
    assert stream["type"] == "redis-streams" and stream["metadata"]["consumerGroup"] == "billing"
    assert stream["metadata"]["lagCount"] == "50"
    # the cell is one Deployment starting at min, each pod its own consumer name
    assert deployments["consumer-q1"]["spec"]["replicas"] == 0
    args = deployments["consumer-q1"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--name") + 1] == "$(ORCH_INSTANCE)"
    assert deployments["jobs"]["spec"]["replicas"] == 2 and deployments["web"]["spec"]["replicas"] == 2
    lines = [line for line in out.stderr.splitlines() if "beanstalkd" in line]
    assert len(lines) == 1 and "KEDA has no scaler" in lines[0], out.stderr


def test_the_schema_check_can_fail():
    validator = keda_validator()
    assert not validator.is_valid({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                                   "spec": {"scaleTargetRef": {"name": "x"}}})  # no triggers
    assert not validator.is_valid({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                                   "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [],
                                            "minReplicas": 1}})  # not a KEDA field


def test_nomad_gets_a_scaling_block(tmp_path):
    out = export(tmp_path, "nomad")
    groups = {g["Name"]: g for g in json.loads(out.stdout)["Job"]["TaskGroups"]}
    assert groups["consumer-q1"]["Count"] == 0
    assert groups["consumer-q1"]["Scaling"]["Min"] == 0 and groups["consumer-q1"]["Scaling"]["Max"] == 3
    assert "Scaling" not in groups["web"] and groups["web"]["Count"] == 2
    args = groups["events"]["Tasks"][0]["Config"]["args"]
    assert args[args.index("--name") + 1] == "events-${NOMAD_ALLOC_INDEX}"


def test_formats_without_an_autoscaler_say_they_run_max(tmp_path):
    out = export(tmp_path, "procfile")
    lines = [line for line in out.stderr.splitlines() if "autoscaling" in line]
    assert len(lines) == 3 and "workers.consumer.replicas" in lines[0] and "(3)" in lines[0], out.stderr
    assert sum(1 for line in out.stdout.splitlines() if line.startswith("consumer-q1")) == 3  # -q1, -q1-1, -q1-2
