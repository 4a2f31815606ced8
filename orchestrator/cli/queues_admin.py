"""`orch queues`: per queue of the config's consumer templates, what is ready, in flight (and
where), retrying, dead-lettered, and how many consumers hold a live lease; `orch queues retry
QUEUE` moves dead letters back. Reads the servers directly; needs no running master."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OrchError
from ..queues.base import redact

BACKENDS = {
    "orchestrator.queues.redis:QueueConsumer": "redis",
    "orchestrator.queues.redis_stream:StreamConsumer": "redis-stream",
    "orchestrator.queues.beanstalkd:QueueConsumer": "beanstalkd",
    "orchestrator.tasks:TaskWorker": "tasks",
}
EXIT_OK, EXIT_USAGE = 0, 2


@dataclass
class QueueRef:
    """One queue on one server, as the config's consumer templates name it."""

    backend: str
    url: str
    name: str
    kwargs: dict[str, Any]
    instances: list[str] = field(default_factory=list)


def queues_of(specs: list[Any]) -> list[QueueRef]:
    """Group the expanded instances that run one of our consumers by (backend, url, queue)."""
    refs: dict[tuple[str, str, str], QueueRef] = {}
    for spec in specs:
        backend = BACKENDS.get(spec.python.target) if spec.python else None
        if backend is None:
            continue
        kwargs = dict(spec.python.kwargs)
        for name in _names(backend, kwargs):
            key = (backend, str(kwargs.get("url", "")), name)
            ref = refs.setdefault(key, QueueRef(backend, key[1], name, kwargs))
            ref.instances.append(spec.name)
    return sorted(refs.values(), key=lambda r: (r.name, r.url, r.backend))


def _names(backend: str, kwargs: dict[str, Any]) -> list[str]:
    if backend == "tasks":  # a task worker names its queues in a list
        queues = kwargs.get("queues", [])
        return [str(q) for q in ([queues] if isinstance(queues, str) else queues)]
    return [str(kwargs.get({"redis": "queue", "redis-stream": "stream"}.get(backend, "tube"), ""))]


def probe(ref: QueueRef) -> dict[str, Any]:
    """Ask the server about one queue; raises OrchError when it cannot be reached."""
    try:
        if ref.backend == "tasks":
            from .tasks_admin import inspect_tasks
            row = inspect_tasks(ref.url, ref.name)
        elif ref.backend == "beanstalkd":
            from ..queues.beanstalkd import inspect_tube
            row = inspect_tube(ref.url, ref.name)
        elif ref.backend == "redis-stream":
            from ..queues.redis_stream import inspect_stream
            row = inspect_stream(ref.url, ref.name, _group(ref), _dead(ref))
        else:
            from ..queues.redis import inspect_queue
            row = inspect_queue(ref.url, ref.name, _dead(ref))
    except OrchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any client error becomes one line, exit 1
        raise OrchError(f"{ref.backend} at {redact(ref.url)}: {exc}") from None
    return {"queue": ref.name, "backend": ref.backend, "url": redact(ref.url),
            "configured": len(ref.instances), **row}


def retry(ref: QueueRef) -> int:
    """Move this queue's dead letters back (beanstalkd: kick buried jobs); returns how many."""
    try:
        if ref.backend == "tasks":
            from .tasks_admin import retry_tasks
            return retry_tasks(ref.url, ref.name, str(ref.kwargs.get("result_url") or ""))
        if ref.backend == "beanstalkd":
            from ..queues.beanstalkd import kick_tube
            return kick_tube(ref.url, ref.name)
        if ref.backend == "redis-stream":
            from ..queues.redis_stream import retry_stream
            return retry_stream(ref.url, ref.name, _dead(ref), str(ref.kwargs.get("field") or "data"))
        from ..queues.redis import retry_queue
        return retry_queue(ref.url, ref.name, _dead(ref))
    except OrchError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OrchError(f"{ref.backend} at {redact(ref.url)}: {exc}") from None


def _scaling(path: Path) -> list[dict[str, Any]]:
    """The running master's autoscaled cells (replicas, backlog, last decision); [] without one."""
    import argparse
    from .link import ask
    try:
        return ask(argparse.Namespace(config=str(path)), path, "scale")["cells"]
    except Exception:  # noqa: BLE001 - no master, an old one: the queues table stands alone
        return []


def _dead(ref: QueueRef) -> str:
    return str(ref.kwargs.get("dead_letter") or f"{ref.name}:dead")


def _group(ref: QueueRef) -> str:
    return str(ref.kwargs.get("group") or "orch")


def render(rows: list[dict[str, Any]]) -> str:
    """The table `orch queues` prints (pure)."""
    if not rows:
        return "no queue consumers in this config"
    head = ("QUEUE", "BACKEND", "SERVER", "READY", "RETRYING", "IN FLIGHT", "DEAD", "CONSUMERS")
    table = [head] + [(r["queue"], r["backend"], r["url"], str(r["ready"]), str(r["retrying"]),
                       str(sum(r["in_flight"].values())), str(r["dead"]),
                       f"{r['consumers']}/{r['configured']}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    for r in rows:
        for instance, count in sorted(r["in_flight"].items()):
            lines.append(f"  {r['queue']}: {count} in flight at {instance}")
    return "\n".join(lines)


def run_queues(path: Path, action: str | None, queue: str | None, as_json: bool) -> int:
    """The `orch queues` command; returns the exit code (OrchError -> 1 in cli.main)."""
    from ..config.load import load_config
    from ..expand.render import expand
    refs = queues_of(expand(load_config(path)))
    if action is None:
        rows = [probe(ref) for ref in refs]
        if as_json:  # the queues, then the running master's autoscaled cells as rows of kind "cell"
            print(json.dumps(rows + [{"kind": "cell", **c} for c in _scaling(path)], indent=2))
        else:
            from .scale_view import render_cells
            print("\n".join([render(rows), *render_cells(_scaling(path))]))
        return EXIT_OK
    chosen = [ref for ref in refs if ref.name == queue]
    if not queue or not chosen:
        known = ", ".join(sorted({r.name for r in refs})) or "none"
        print(f"orch: queues retry: no queue {queue!r} in {path} (queues: {known})",
              file=sys.stderr)
        return EXIT_USAGE
    moved = {f"{ref.name}@{redact(ref.url)}": retry(ref) for ref in chosen}
    if as_json:
        print(json.dumps(moved))
    else:
        for where, count in moved.items():
            print(f"{where}: moved {count} dead-lettered message(s) back")
    return EXIT_OK
