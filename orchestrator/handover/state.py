"""The record a master hands its successor across exec: versioned JSON, built and read by
pure functions.

Times are CLOCK_MONOTONIC readings, which exec does not reset: an instance's `started_at`
and the deadlines of its timers (backoff, stop, watchdog, request) carry over as they are,
so uptimes and delays go on where they were.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..errors import OrchError

VERSION = 5  # of the record's format; 1 had no per-instance deadlines, 2 no rollouts, 3 no code rolls,
# 4 no old spawners beside the spawner
KEPT = ("restarts", "failures", "last_exit", "last_reason", "limit_kills", "held", "ready", "requests",
        "counts_requests", "notify_status", "pid", "started_at", "start_ticks", "tracked")
STATES = ("running", "stopping", "stopped", "exited", "backoff", "crash-looping", "waiting")


class HandoverError(OrchError):
    """The record cannot be taken over (a newer format, a damaged one): the upgrade is refused."""


def instance_record(inst: Any, probes: dict[str, Any] | None = None, spec: Any = None) -> dict[str, Any]:
    """One instance as the record keeps it, with its probes' state. Its spec is kept (`spec`,
    encoded by specs.py) only while it runs one the config no longer has (a rollout has not
    reached it, or it is stopping to restart onto the new one); otherwise the successor
    expands the same config, which the upgrade checked is the one applied."""
    record = {key: getattr(inst, key) for key in KEPT}
    record["probes"] = probes
    record["spec"] = spec
    record["name"] = inst.name
    record["state"] = inst.state.value
    record["then"] = inst.then.value
    record["stop_reason"] = inst.stop_reason
    record["timer"] = _deadline(inst.timer)
    record["deadlines"] = {key: _deadline(timer) for key, timer in inst.limit_timers.items()
                           if key in ("watchdog", "request") and _deadline(timer) is not None}
    return record


def rollout_record(rollout: Any, code: list[Any] | None = None) -> dict[str, Any]:
    """A rolling restart in progress: who is still waiting (and whether onto a new spec,
    which the successor expands from the same config) and who is being restarted now;
    `code`: [token, label] when it rolls new code onto fresh zygotes (`orch reload --code`)."""
    return {"label": rollout.label, "batch": rollout.batch, "total": rollout.total,
            "waiting": [[inst.name, spec is not None] for inst, spec in rollout.waiting],
            "in_flight": sorted(inst.name for inst in rollout.in_flight), "code": code}


def _deadline(timer: Any) -> float | None:
    return None if timer is None or timer.cancelled else timer.when


def build(*, orch: str, config: str, quiet: bool, master: dict[str, Any], spawner: dict[str, Any],
          fds: dict[str, Any], instances: Iterable[dict[str, Any]], pipes: list[dict[str, Any]],
          reply: int | None, rollouts: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The whole record."""
    return {"version": VERSION, "orch": orch, "config": config, "quiet": quiet, "master": master,
            "spawner": spawner, "fds": fds, "instances": list(instances), "pipes": pipes, "reply": reply,
            "rollouts": list(rollouts)}


def migrate(record: Any) -> dict[str, Any]:
    """The record in this version's format: an older one is upgraded, a newer one (or one
    that is not a record) refused with HandoverError."""
    if not isinstance(record, dict) or not isinstance(record.get("version"), int):
        raise HandoverError("the handed-over state is not an orch master's record")
    version = record["version"]
    if version > VERSION:
        raise HandoverError(f"the handed-over state has format {version}, newer than this orch "
                            f"({VERSION}): a downgrade across formats is refused")
    if version < 1:
        raise HandoverError(f"the handed-over state has an unknown format {version}")
    if version == 1:  # no deadlines of limits kept: they re-arm on the worker's next message
        for inst in record.get("instances", []):
            inst.setdefault("deadlines", {})
        record["version"] = 2
    if record["version"] == 2:  # no reload or rollout was in flight: the old master waited for quiet
        for inst in record.get("instances", []):
            inst.setdefault("tracked", 0)
        record.setdefault("rollouts", [])
        record["version"] = 3
    if record["version"] == 3:  # no code reload's roll was in flight (the old master waited for
        for rollout in record.get("rollouts", []):  # it), nor a spec the config no longer has kept
            rollout.setdefault("code", None)
        for inst in record.get("instances", []):
            inst.setdefault("spec", None)
        record["version"] = 4
    if record["version"] == 4 and isinstance(record.get("spawner"), dict):  # one spawner, no older one beside
        record["spawner"].setdefault("beside", [])
        record["version"] = 5
    for key in ("config", "fds", "instances", "pipes", "spawner", "master"):
        if key not in record:
            raise HandoverError(f"the handed-over state has no {key!r}")
    for inst in record["instances"]:
        if inst.get("state") not in STATES:
            raise HandoverError(f"instance {inst.get('name')!r} is in state {inst.get('state')!r}, "
                                "which a master cannot take over")
    return record


def spawner_protocol() -> list[Any]:
    """The master-spawner protocol of this code: its revision and SpawnRequest's fields."""
    from ..spawn.request import PROTOCOL, SpawnRequest
    return [PROTOCOL, *SpawnRequest._fields]


def check_protocol(record: dict[str, Any]) -> None:
    """Refuse (HandoverError) a successor that cannot take over the running spawner: one
    whose protocol differs starts a spawner of its own beside it (beside.py), which needs
    the core every protocol keeps (spawn/request.py: CORE) and nothing the core lacks."""
    from ..spawn.request import CORE
    spawner = record["spawner"]
    for old in spawner.get("beside", []):  # kept beside it by an earlier upgrade
        if old.get("core", 1) != CORE:
            raise HandoverError(f"the spawner of orch {old.get('version')} still running beside the master's "
                                "speaks another core than this orch (spawn/request.py: CORE): upgrade once its "
                                f"{len(old['pids'])} instances have exited (`orch restart` moves them)")
    if spawner.get("protocol") in (None, spawner_protocol()):
        return
    why = None
    if spawner.get("core", 1) != CORE:  # masters before CORE existed all spoke core 1
        why = "not even the core an orch keeps for an older spawner beside its own (spawn/request.py: CORE)"
    elif (record["master"].get("cgroups") or {}).get("made"):
        why = 'and with cgroup = "auto" its instances\' cgroups cannot be shared with a second spawner'
    elif any(rollout.get("code") for rollout in record.get("rollouts", [])):
        why = "and new code is rolling onto its zygotes (`orch reload --code`): upgrade once the roll is done"
    if why:
        raise HandoverError(f"the running spawner (orch {spawner.get('version')}) speaks another protocol "
                            f"than this orch, {why}: restart the master to upgrade (orch down, orch up)")


def missing_names(record: dict[str, Any], names: Iterable[str]) -> list[str]:
    """Instances of the record the expanded config does not have (the proof refuses them),
    those being removed aside."""
    known = set(names)
    return sorted(i["name"] for i in record["instances"] if i["name"] not in known and not removing(i))


def removing(row: dict[str, Any]) -> bool:
    """A reload removed this instance and its process is stopping: no config has it any more."""
    return row.get("state") == "stopping" and row.get("then") == "remove"
