"""`orch export --format nomad`: a job in Nomad's JSON job format (the API's `{"Job": ...}`),
a task group per matrix combination with its Count (pure). Durations are nanoseconds.

With `--image` tasks use the docker driver; without, the exec driver (which has no working
directory setting, so cwd is a warning then).
"""

from __future__ import annotations

import json
import math
import re
import signal
from typing import Any

from ..expand.spec import ProcessSpec
from .autoscale import nomad_named, nomad_scaling
from .production import env_file_values, setup_warnings
from .common import Options, Output, process_warnings, refuse, unexpressed
from .kubernetes import dns_label, groups
from .probes import lost_lines, nomad_checks, nomad_lost

UNEXPRESSED = ("backoff_max", "min_uptime", "kill_mode", "max_lifetime", "timeout",
               "max_requests", "log_max_size", "log_backups")
# env files are inlined into the task's Env (values in the job file, as Nomad's own `env` is)
CARRIED = ("user", "env_file")
NS = 1_000_000_000
MIB = 2**20


def _restart(spec: ProcessSpec) -> dict[str, Any]:
    policy = spec.policy
    if policy.restart == "never":
        return {"Attempts": 0, "Interval": int(policy.backoff_initial * NS) or NS, "Delay": 0,
                "Mode": "fail"}
    delay = int(policy.backoff_initial * NS)
    # "delay" mode: after Attempts restarts within Interval, wait out the interval and go on.
    return {"Attempts": 10, "Interval": max(30 * 60 * NS, 20 * delay), "Delay": delay, "Mode": "delay"}


def _resources(spec: ProcessSpec) -> dict[str, Any]:
    soft, hard = spec.policy.memory_soft, spec.policy.memory_hard
    resources: dict[str, Any] = {"CPU": 100, "MemoryMB": 300}
    if soft is not None or hard is not None:
        resources["MemoryMB"] = math.ceil((soft if soft is not None else hard) / MIB)
    if soft is not None and hard is not None:
        resources["MemoryMaxMB"] = math.ceil(hard / MIB)
    return resources


def _task(name: str, spec: ProcessSpec, count: int, options: Options) -> dict[str, Any]:
    config: dict[str, Any] = {"command": spec.argv[0], "args": list(spec.argv[1:])}
    if options.image:
        config = {"image": options.image, "entrypoint": [spec.argv[0]],
                  "args": list(spec.argv[1:]), "work_dir": spec.cwd}
    task: dict[str, Any] = {
        "Name": dns_label(spec.template),
        "Driver": "docker" if options.image else "exec",
        "Config": config,
        # Nomad fills in ${NOMAD_ALLOC_INDEX} (0..Count-1) at run time: one name per replica.
        "Env": {"ORCH_INSTANCE": f"{name}-${{NOMAD_ALLOC_INDEX}}" if count > 1 else name,
                **dict(env_file_values(spec)), **dict(spec.env)},
        "Resources": _resources(spec),
        "KillTimeout": int(spec.policy.stop_timeout * NS),
        "KillSignal": signal.Signals(spec.policy.stop_signal).name,
        "Meta": {"orch_template": spec.template, **{f"orch_param_{k}": str(v) for k, v in spec.params}},
    }
    if spec.run_as is not None and spec.run_as.user is not None:
        task["User"] = spec.run_as.user  # a name, looked up where the task runs
    return task


def job(specs: list[ProcessSpec], options: Options, warnings: list[str] | None = None) -> dict[str, Any]:
    """The job document."""
    task_groups = []
    for name, members in groups(specs):
        spec = members[0]
        group: dict[str, Any] = {"Name": dns_label(name), "Count": len(members),
                                 "RestartPolicy": _restart(spec), "Tasks": [_task(name, spec, len(members), options)]}
        scaling = nomad_scaling(members, warnings if warnings is not None else [])
        if scaling is not None:  # an autoscaled cell: from min, up to max
            group["Count"], group["Scaling"] = scaling["Min"], scaling
            if spec.python is not None:
                nomad_named(group, name)
        if spec.policy.rolling:
            group["Update"] = {"MaxParallel": spec.policy.max_unavailable}
        services, networks = nomad_checks(spec, group["Tasks"][0]["Name"])
        group.update({"Services": services} if services else {}, **({"Networks": networks} if networks else {}))
        task_groups.append(group)
    fleet = dns_label(options.fleet)
    return {"Job": {"ID": fleet, "Name": options.fleet, "Type": "service", "Datacenters": ["*"],
                    "TaskGroups": task_groups}}


def export(specs: list[ProcessSpec], options: Options) -> Output:
    """One file, `<fleet>.nomad.json`, for `nomad job run -json` or the jobs API."""
    # Nomad interpolates ${...} in a task's args and env at run time, with no escape.
    refuse(specs, options, "nomad", "'${' (Nomad interpolates it)", re.compile(r"\$\{"), files=True)
    out = Output(warnings=unexpressed("nomad", specs, UNEXPRESSED) + setup_warnings("nomad", specs, CARRIED)
                 + process_warnings("nomad", specs, False) + lost_lines("nomad", specs, nomad_lost))
    if any(s.policy.restart == "on-failure" for s in specs):
        out.warnings.append("orch export: nomad cannot express workers.*.restart = \"on-failure\" "
                            "(a service task restarts on any exit): left out")
    if not options.image and any(s.cwd != options.workdir for s in specs):
        out.warnings.append("orch export: nomad's exec driver cannot express workers.*.cwd "
                            "(give --image for the docker driver's work_dir): left out")
    text = json.dumps(job(specs, options, out.warnings), indent=2, ensure_ascii=False) + "\n"
    out.files[f"{dns_label(options.fleet)}.nomad.json"] = text
    return out
