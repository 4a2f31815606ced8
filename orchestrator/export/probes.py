"""Health probes and start order (`probes`, `after`) in other engines' terms (pure): Kubernetes
startup/readiness/liveness probes, systemd's Type=notify, WatchdogSec= and After=/Requires=,
Nomad service checks, and for every target one line per template naming what it cannot carry.

What maps how:
- kubernetes: http -> httpGet (port and path; the pod's own address), tcp -> tcpSocket, exec
  -> exec; periods and timeouts round up to whole seconds (its unit); successThreshold is 1
  outside readiness (the API refuses more). notify and `status` are lost; `after` is lost
  (Deployments start in any order).
- systemd: notify probes become Type=notify (READY=1), TimeoutStartSec= (a startup probe's
  period x failures) and WatchdogSec= (period x failures); `after` becomes After= and
  Requires= on every instance unit of those templates, and a one-shot others are after
  becomes Type=oneshot with RemainAfterExit=yes so that After= waits for it to exit. http,
  tcp and exec probes are lost.
- nomad: http and tcp -> service checks on a reserved port, exec -> a script check (which
  needs Consul, so such a service uses the consul provider); liveness gets check_restart
  (failures in a row, a startup probe's period x failures as its grace). notify is lost,
  and `after` too (groups start in any order).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from ..config.probes import Probe
from ..expand.spec import ProcessSpec
from .common import seconds

NS = 1_000_000_000
K8S_FIELD = {"startup": "startupProbe", "readiness": "readinessProbe", "liveness": "livenessProbe"}


def _per_template(specs: Iterable[ProcessSpec], say: Callable[[ProcessSpec], list[str]]) -> dict[str, list[str]]:
    """template: what `say` finds lost in its first instance, for templates where it finds some."""
    found: dict[str, list[str]] = {}
    for spec in specs:
        if spec.template not in found:
            found[spec.template] = say(spec)
    return {t: lost for t, lost in sorted(found.items()) if lost}


def lost_lines(target: str, specs: Iterable[ProcessSpec], say: Callable[[ProcessSpec], list[str]]) -> list[str]:
    """One line per template naming what `target` cannot carry of its probes and `after`."""
    return [f"orch export: {target} cannot carry workers.{template}: {'; '.join(lost)}: left out"
            for template, lost in _per_template(specs, say).items()]


def _named(probes: Iterable[Probe]) -> str:
    return ", ".join(f"{p.role} ({p.kind})" for p in probes)


def everything_lost(spec: ProcessSpec) -> list[str]:
    """For targets with neither health checks nor start order (supervisord, a Procfile)."""
    lost = [f"probes {_named(spec.probes)}"] if spec.probes else []
    if spec.policy.after:
        lost.append(f"after = {', '.join(spec.policy.after)} (every process starts at once)")
    return lost


# --- kubernetes ---------------------------------------------------------------------------

def kubernetes_probes(spec: ProcessSpec) -> dict[str, Any]:
    """The container's startupProbe, readinessProbe and livenessProbe (notify probes left out)."""
    fields: dict[str, Any] = {}
    for p in spec.probes:
        if p.kind == "http":
            action: dict[str, Any] = {"httpGet": {"path": p.path, "port": p.port}}
        elif p.kind == "tcp":
            action = {"tcpSocket": {"port": p.port}}
        elif p.kind == "exec":
            action = {"exec": {"command": list(p.argv)}}
        else:
            continue
        fields[K8S_FIELD[p.role]] = {**action, "periodSeconds": max(1, math.ceil(p.period)),
                                     "timeoutSeconds": max(1, math.ceil(p.timeout)),
                                     "failureThreshold": p.failures,
                                     "successThreshold": p.successes if p.role == "readiness" else 1}
    return fields


def _checks_lost(spec: ProcessSpec, no_notify: str, passing: str, unordered: str,
                more: Iterable[str] = ()) -> list[str]:
    """What a target with health checks but neither sd_notify nor start order loses: notify
    probes (`no_notify` says why), `status` (`passing` is what passes instead), `more`, and
    `after` (`unordered` says how it starts instead)."""
    lost = []
    notify = [p for p in spec.probes if p.kind == "notify"]
    if notify:
        lost.append(f"probes {_named(notify)} ({no_notify})")
    if any(p.status is not None for p in spec.probes):
        lost.append(f"probes.*.status (any {passing} passes)")
    lost += more
    if spec.policy.after:
        lost.append(f"after = {', '.join(spec.policy.after)} ({unordered})")
    return lost


def kubernetes_lost(spec: ProcessSpec) -> list[str]:
    checked = [p for p in spec.probes if p.kind != "notify"]
    more = []
    if any(p.successes > 1 for p in checked if p.role != "readiness"):
        more.append("successes above 1 outside readiness (the API allows 1)")
    if any(p.period != math.ceil(p.period) or p.timeout < 1 for p in checked):
        more.append("sub-second probe periods or timeouts (rounded up to whole seconds)")
    return _checks_lost(spec, "no sd_notify in a pod", "200-399", "Deployments start in any order; "
                       "an init container that waits for a Service would carry it", more)


# --- systemd ------------------------------------------------------------------------------

def systemd_type(spec: ProcessSpec, one_shot_needed: bool) -> list[str]:
    """Type= and what goes with it: notify probes, the `timeout` watchdog, a one-shot others
    are after (Type=oneshot, so that their After= waits for its exit)."""
    by_kind = {(p.role, p.message) for p in spec.probes if p.kind == "notify"}
    ready = {("readiness", "ready"), ("startup", "ready")} & by_kind
    watchdog = next((p for p in spec.probes if p.kind == "notify" and p.role == "liveness"), None)
    lines = []
    if ready or spec.policy.timeout is not None:
        lines += ["Type=notify", "NotifyAccess=all"]
    elif one_shot_needed:
        return ["Type=oneshot", "RemainAfterExit=yes"]
    elif watchdog is not None:
        lines += ["Type=exec", "NotifyAccess=all"]
    else:
        lines.append("Type=exec")
    if watchdog is not None:
        lines.append(f"WatchdogSec={seconds(watchdog.period * watchdog.failures)}")
    elif spec.policy.timeout is not None:  # the notify protocol's watchdog: a worker that stalls restarts
        lines.append(f"WatchdogSec={seconds(spec.policy.timeout)}")
    startup = next((p for p in spec.probes if p.kind == "notify" and p.role == "startup"), None)
    if startup is not None:
        lines.append(f"TimeoutStartSec={seconds(startup.period * startup.failures)}")
    return lines


def systemd_order(spec: ProcessSpec, units: dict[str, list[str]]) -> list[str]:
    """After= and Requires= on every instance unit of the templates `spec` is after."""
    lines = []
    for template in spec.policy.after:
        for unit in units.get(template, []):
            lines += [f"After={unit}", f"Requires={unit}"]
    return lines


def systemd_lost(spec: ProcessSpec) -> list[str]:
    lost = [p for p in spec.probes if p.kind != "notify"]
    said = [f"probes {_named(lost)} (systemd runs no health checks; only notify probes carry)"] if lost else []
    heartbeat = [p.role for p in spec.probes if p.kind == "notify" and p.message == "watchdog" and p.role != "liveness"]
    return said + [f"{role} notify = \"watchdog\" (WatchdogSec= restarts; only a liveness watchdog carries)"
                   for role in heartbeat]


# --- nomad --------------------------------------------------------------------------------

def nomad_checks(spec: ProcessSpec, task: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Services, Networks) of a task group: one service with a check per probe, and the
    probed ports reserved."""
    probes = [p for p in spec.probes if p.kind != "notify"]
    if not probes:
        return [], []
    consul = any(p.kind == "exec" for p in probes)  # script checks are Consul's only
    startup = next((p for p in probes if p.role == "startup"), None)
    ports = sorted({p.port for p in probes if p.kind != "exec"})
    checks = []
    for p in probes:
        check: dict[str, Any] = {"Name": p.role, "Interval": max(NS, int(p.period * NS)),
                                 "Timeout": max(NS, int(p.timeout * NS))}
        if p.kind == "http":
            check.update(Type="http", Path=p.path, PortLabel=f"probe{p.port}")
        elif p.kind == "tcp":
            check.update(Type="tcp", PortLabel=f"probe{p.port}")
        else:
            check.update(Type="script", Command=p.argv[0], Args=list(p.argv[1:]), TaskName=task)
        if consul:
            check.update(SuccessBeforePassing=p.successes, FailuresBeforeCritical=p.failures)
        if p.role == "liveness":
            grace = startup.period * startup.failures if startup is not None else 0
            check["CheckRestart"] = {"Limit": p.failures, "Grace": int(grace * NS), "IgnoreWarnings": False}
        checks.append(check)
    service: dict[str, Any] = {"Name": task, "Provider": "consul" if consul else "nomad", "Checks": checks}
    if ports:
        service["PortLabel"] = f"probe{ports[0]}"
    networks = [{"ReservedPorts": [{"Label": f"probe{port}", "Value": port} for port in ports]}] if ports else []
    return [service], networks


def nomad_lost(spec: ProcessSpec) -> list[str]:
    return _checks_lost(spec, "Nomad has no sd_notify", "2xx", "task groups start in any order")
