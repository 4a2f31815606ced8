"""Autoscaled templates (`replicas = { min, max, backlog }`) for engines past one machine
(pure): a KEDA ScaledObject per Deployment of a cell for Kubernetes (KEDA's `redis` scaler for
lists, `redis-streams` on the group's lag for streams), and a `Scaling` block per task group for
Nomad. beanstalkd and backlog commands have no KEDA scaler: said in one line each, and their
Deployment keeps `max` replicas."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from ..expand.spec import ProcessSpec

KEDA_POLL = 1  # seconds: orch reads a backlog once a second too


def shared_argv(spec: ProcessSpec) -> tuple[str, ...]:
    """The argv the replicas of an autoscaled Python worker cell share: each names itself by
    its pod (`--name $(ORCH_INSTANCE)`, set in `scaled_object`), so the cell is one Deployment."""
    argv = spec.argv
    if spec.autoscale is None or spec.python is None or "--name" not in argv[:-1]:
        return argv
    at = argv.index("--name") + 1
    return argv[:at] + ("",) + argv[at + 1:]


def _pod_named(deployment: dict[str, Any]) -> None:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    if "--name" in args[:-1]:  # Kubernetes expands $(ORCH_INSTANCE): the pod's own name
        args[args.index("--name") + 1] = "$(ORCH_INSTANCE)"


def _trigger(spec: ProcessSpec, warnings: list[str]) -> dict[str, Any] | None:
    auto = spec.autoscale
    source = auto.source
    if source.kind in ("beanstalkd", "command"):
        what = "a beanstalkd tube" if source.kind == "beanstalkd" else "a backlog command"
        warnings.append(f"orch export: kubernetes: KEDA has no scaler for {what} ({auto.cell}): "
                        f"its Deployment runs a fixed replicas.max ({auto.max})")
        return None
    url = urlsplit(source.url)
    metadata = {"address": f"{url.hostname}:{url.port or 6379}", "databaseIndex": url.path.strip("/") or "0"}
    if url.password is not None:
        warnings.append(f"orch export: kubernetes: the password in {auto.cell}'s redis URL is left out of its "
                        "ScaledObject: give the trigger an authenticationRef (a TriggerAuthentication)")
    if source.kind == "redis":
        metadata.update(listName=source.key, listLength=str(auto.per))
        return {"type": "redis", "metadata": metadata}
    # The group's lag (entries not yet delivered): the only streams measure KEDA scales to 0 on.
    metadata.update(stream=source.key, consumerGroup=source.group, lagCount=str(auto.per))
    return {"type": "redis-streams", "metadata": metadata}


def _behavior(spec: ProcessSpec) -> dict[str, Any]:
    pace = spec.autoscale.scale
    def rules(window: float) -> dict[str, Any]:
        return {"stabilizationWindowSeconds": min(3600, math.ceil(window)),
                "policies": [{"type": "Pods", "value": pace.step, "periodSeconds": 1}]}
    return {"scaleUp": rules(pace.up_after), "scaleDown": rules(pace.down_after)}


def scaled_object(deployment: dict[str, Any], members: list[ProcessSpec],
                  warnings: list[str]) -> dict[str, Any] | None:
    """The ScaledObject of a Deployment holding one autoscaled cell (its replicas set to the
    cell's min, from where KEDA scales it), or None (the Deployment unchanged or fixed at max)."""
    spec = members[0]
    auto = spec.autoscale
    if auto is None:
        return None
    if len(members) != auto.max:  # a field uses {{ replica }}: one Deployment per instance
        warnings.append(f"orch export: kubernetes: {auto.cell} renders each replica differently, so its "
                        "instances are separate Deployments KEDA cannot scale as one: left fixed")
        return None
    if spec.python is not None:  # one Deployment for the cell: each pod its own consumer name
        _pod_named(deployment)
    trigger = _trigger(spec, warnings)
    if trigger is None:
        return None
    name = deployment["metadata"]["name"]
    deployment["spec"]["replicas"] = auto.min
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": name, "labels": dict(deployment["metadata"]["labels"])},
        "spec": {
            "scaleTargetRef": {"name": name},
            "minReplicaCount": auto.min, "maxReplicaCount": auto.max,
            "pollingInterval": KEDA_POLL, "cooldownPeriod": max(1, math.ceil(auto.scale.down_after)),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
            "triggers": [trigger],
        },
    }


def nomad_named(group: dict[str, Any], name: str) -> None:
    """An autoscaled Python worker cell is one task group: each allocation its own consumer name."""
    args = group["Tasks"][0]["Config"]["args"]
    if "--name" in args[:-1]:  # Nomad fills in ${NOMAD_ALLOC_INDEX} at run time
        args[args.index("--name") + 1] = f"{name}-${{NOMAD_ALLOC_INDEX}}"


def nomad_scaling(members: list[ProcessSpec], warnings: list[str]) -> dict[str, Any] | None:
    """A task group's `Scaling` block (its Count set by the caller to min), or None."""
    auto = members[0].autoscale
    if auto is None or len(members) != auto.max:
        return None
    warnings.append(f"orch export: nomad: {auto.cell} gets Scaling {{ Min = {auto.min}, Max = {auto.max} }}; "
                    f"the Nomad Autoscaler needs a check on its queue ({auto.describe()}, {auto.per} "
                    "per replica) from an APM plugin you run: left for you to add to Policy")
    return {"Min": auto.min, "Max": auto.max, "Enabled": True,
            "Policy": {"evaluation_interval": "1s", "cooldown": f"{math.ceil(auto.scale.down_after)}s"}}


def fixed_warnings(target: str, specs: list[ProcessSpec]) -> list[str]:
    """One line per autoscaled template for a format with no autoscaler: it runs max replicas."""
    seen = {s.template: s.autoscale.max for s in specs if s.autoscale is not None}
    return [f"orch export: {target} cannot express workers.{name}.replicas = {{ min, max, backlog }} "
            f"(autoscaling): each combination runs replicas.max ({high})" for name, high in seen.items()]
