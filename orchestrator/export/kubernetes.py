"""`orch export --format kubernetes --image IMAGE`: a Deployment per matrix combination (pure).

Replicas carry over when a combination's instances differ only in their names (no field
uses `{{ replica }}`); otherwise each instance gets its own Deployment of one replica.
Every `$` is written `$$`, so Kubernetes' `$(VAR)` expansion leaves values as orch renders them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from ..errors import OrchError
from ..expand.spec import ProcessSpec
from .autoscale import scaled_object, shared_argv
from .production import env_file_values, setup_warnings
from .common import Options, Output, process_warnings, unexpressed
from .probes import kubernetes_lost, kubernetes_probes, lost_lines

UNEXPRESSED = ("restart", "backoff_initial", "backoff_max", "min_uptime", "stop_signal", "kill_mode",
               "max_lifetime", "timeout", "max_requests", "log_max_size", "log_backups")
CARRIED = ("user", "group", "groups", "env_file")
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


def dns_label(text: str, limit: int = 63) -> str:
    """`text` as a DNS-1123 label (lowercase, digits, '-'), a hash suffix keeping it unique."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if clean == text and len(clean) <= limit:
        return clean
    suffix = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{clean[:limit - 9].strip('-')}-{suffix}"


def label_value(value: object) -> str:
    """A label value: at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric."""
    return _LABEL_VALUE.sub("_", str(value))[:63].strip("_.-")


def _escape(text: str) -> str:
    return text.replace("$", "$$")


def groups(specs: list[ProcessSpec]) -> list[tuple[str, list[ProcessSpec]]]:
    """(name, instances) per Deployment: a combination's replicas share one when only their
    names differ, else one per instance."""
    combos: dict[tuple[str, str], list[ProcessSpec]] = {}
    for spec in specs:
        combos.setdefault((spec.template, json.dumps(spec.params, default=str)), []).append(spec)
    found = []
    for members in combos.values():
        first = members[0]
        same = all(_shared(s) == _shared(first) for s in members)
        base = first.name if len(members) == 1 else "-".join(
            [first.template] + [str(v) for _, v in first.params])
        found += [(base, members)] if same else [(s.name, [s]) for s in members]
    return found


def _shared(spec: ProcessSpec) -> tuple:
    """What the replicas of one Deployment must have in common."""
    return shared_argv(spec), spec.env, spec.cwd, spec.python, spec.run_as, spec.file_env, spec.probes


def _secret_name(name: str) -> str:
    return dns_label(name, 58) + "-env"


def secret(name: str, spec: ProcessSpec) -> dict[str, Any] | None:
    """The env files' assignments as an Opaque Secret for `envFrom` (`env` wins there too, and
    envFrom values are never `$(VAR)`-expanded, so they are written as read)."""
    if not spec.env_files:
        return None
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": _secret_name(name), "labels": {"app.kubernetes.io/managed-by": "orch",
                                                                 "orch/deployment": dns_label(name)}},
            "stringData": dict(env_file_values(spec))}


def security_context(spec: ProcessSpec) -> dict[str, Any] | None:
    """runAsUser, runAsGroup and supplementalGroups: this host's numeric ids for the names."""
    if spec.run_as is None:
        return None
    context = {"runAsUser": spec.run_as.uid} if spec.run_as.user is not None else {}
    return {**context, "runAsGroup": spec.run_as.gid, "supplementalGroups": list(spec.run_as.groups)}


def _resolved(specs: list[ProcessSpec]) -> list[str]:
    """One line per user named by name: the image must hold the same ids."""
    users = sorted({(s.run_as.user, s.run_as.uid) for s in specs if s.run_as is not None and s.run_as.user})
    return [f"orch export: kubernetes: user {user} resolved to uid {uid} on this host "
            "(runAsUser is numeric; the image must give that uid the same meaning)" for user, uid in users]


def _container(spec: ProcessSpec, options: Options, name: str = "") -> dict[str, Any]:
    env = [{"name": "ORCH_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    env += [{"name": k, "value": _escape(v)} for k, v in spec.env]
    container: dict[str, Any] = {
        "name": dns_label(spec.template), "image": options.image,
        "command": [_escape(spec.argv[0])], "args": [_escape(a) for a in spec.argv[1:]],
        "env": env, "workingDir": spec.cwd,
    }
    if spec.env_files:
        container["envFrom"] = [{"secretRef": {"name": _secret_name(name)}}]
    memory: dict[str, Any] = {}
    if spec.policy.memory_soft is not None:
        memory["requests"] = {"memory": str(spec.policy.memory_soft)}
    if spec.policy.memory_hard is not None:
        memory["limits"] = {"memory": str(spec.policy.memory_hard)}
    if memory:
        container["resources"] = memory
    container.update(kubernetes_probes(spec))
    return container


def deployment(name: str, members: list[ProcessSpec], options: Options) -> dict[str, Any]:
    """One Deployment document for a group of identical instances."""
    spec = members[0]
    labels = {"app.kubernetes.io/managed-by": "orch", "app.kubernetes.io/part-of": label_value(options.fleet),
              "orch/template": label_value(spec.template), "orch/deployment": dns_label(name)}
    labels.update({f"orch/param-{dns_label(k)}": label_value(v) for k, v in spec.params})
    strategy: dict[str, Any] = {"type": "Recreate"}
    if spec.policy.rolling:
        strategy = {"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": spec.policy.max_unavailable, "maxSurge": 0}}
    pod: dict[str, Any] = {"terminationGracePeriodSeconds": math.ceil(spec.policy.stop_timeout),
                           "containers": [_container(spec, options, name)]}
    if security_context(spec):
        pod["securityContext"] = security_context(spec)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": dns_label(name), "labels": labels},
        "spec": {
            "replicas": len(members), "strategy": strategy,
            "selector": {"matchLabels": {"orch/deployment": dns_label(name)}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS
    return key if plain else json.dumps(key, ensure_ascii=False)


def to_yaml(value: Any, indent: str = "") -> str:
    """Block-style YAML; every string value is a JSON (so YAML double-quoted) scalar, never
    read as a number, a boolean or anything else."""
    if isinstance(value, dict) and value:
        return "".join(f"{indent}{_key(k)}:" + _nested(v, indent) for k, v in value.items())
    if isinstance(value, list) and value:
        items = []
        for item in value:
            text = to_yaml(item, indent + "  ")
            items.append(indent + "- " + text[len(indent) + 2:])
        return "".join(items)
    return f"{indent}{json.dumps(value, ensure_ascii=False)}\n"


def _nested(value: Any, indent: str) -> str:
    if isinstance(value, dict) and value:
        return "\n" + to_yaml(value, indent + "  ")
    if isinstance(value, list) and value:
        return "\n" + to_yaml(value, indent)
    return " " + to_yaml(value)


def export(specs: list[ProcessSpec], options: Options) -> Output:
    """One file, `kubernetes.yaml`, a document per Deployment and one per env files' Secret."""
    if not options.image:
        raise OrchError("--format kubernetes needs --image IMAGE (an image with the workers' code "
                        "and orch installed)")
    out = Output(warnings=unexpressed("kubernetes", specs, UNEXPRESSED) + setup_warnings("kubernetes", specs, CARRIED)
                 + process_warnings("kubernetes", specs, False) + _resolved(specs)
                 + lost_lines("kubernetes", specs, kubernetes_lost))
    documents = []
    for name, members in groups(specs):
        found = secret(name, members[0])
        documents += [to_yaml(found)] if found else []
        made = deployment(name, members, options)
        scaled = scaled_object(made, members, out.warnings)  # an autoscaled cell: KEDA scales it
        documents += [to_yaml(made)] + ([to_yaml(scaled)] if scaled else [])
    out.files["kubernetes.yaml"] = "---\n" + "---\n".join(documents)
    return out
