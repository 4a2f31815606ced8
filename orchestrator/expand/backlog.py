"""An autoscaled instance's `Autoscale`: its cell, bounds and backlog source rendered
(render.py calls `autoscale_fields` once per instance). orch's own consumers need no `backlog`
table: their rendered kwargs name the queue (url and queue, stream and group, or tube)."""

from __future__ import annotations

from typing import Any

from ..config.load import Template
from ..config.scaling import CONSUMERS, Autoscale, BacklogDecl, Replicas
from .production import SetupError


def autoscale_fields(template: Template, cell: str, context: dict[str, Any], renderer: Any,
                     kwargs: dict[str, Any] | None, step: list[str]) -> dict[str, Any]:
    """{"autoscale": Autoscale} for an autoscaled template, else {}."""
    replicas = template.replicas
    if not isinstance(replicas, Replicas):
        return {}
    step[0] = "backlog"
    decl = template.policy.backlog
    if decl is None:
        source = _consumer_source(CONSUMERS[str(template.target)], kwargs or {})
    else:
        source = BacklogDecl(decl.kind, _text(decl.url, context, renderer), _text(decl.key, context, renderer),
                             _text(decl.group, context, renderer),
                             tuple(_text(a, context, renderer) for a in decl.argv), decl.per, decl.timeout)
    if source.kind != "command" and not (source.url and source.key):
        raise SetupError("backlog", f"{cell}: the backlog source renders empty (url {source.url!r}, "
                         f"queue {source.key!r})")
    per = replicas.per if replicas.per is not None else source.per
    assert per is not None  # config/scaling.py: scaling_problems
    return {"autoscale": Autoscale(cell, replicas.min, replicas.max, per, template.policy.scale, source)}


def _consumer_source(kind: str, kwargs: dict[str, Any]) -> BacklogDecl:
    url = str(kwargs.get("url") or "")
    if kind == "redis":
        return BacklogDecl("redis", url, str(kwargs.get("queue") or ""))
    if kind == "redis-stream":
        return BacklogDecl("redis-stream", url, str(kwargs.get("stream") or ""), str(kwargs.get("group") or "orch"))
    return BacklogDecl("beanstalkd", url, str(kwargs.get("tube") or ""))


def _text(value: str, context: dict[str, Any], renderer: Any) -> str:
    return renderer.text(value, context) if "{" in value else value
