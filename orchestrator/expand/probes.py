"""One instance's probes, their targets rendered and resolved (render.py calls
`probe_fields` once per instance)."""

from __future__ import annotations

from typing import Any

from ..config.load import Template
from ..config.probes import Probe, resolve
from .production import SetupError


def probe_fields(template: Template, context: dict[str, Any], renderer: Any,
                 step: list[str]) -> dict[str, Any]:
    """{"probes": (Probe, ...)} for a template with probes, else {}. A probe whose address is
    a held socket of the template is refused: it would reach whichever replica accepts."""
    if not template.policy.probes:
        return {}
    step[0] = "probes"
    shared = {info["bind"]: name for name, info in context.get("sockets", {}).items()}
    probes: list[Probe] = []
    for decl in template.policy.probes:
        try:
            probe = resolve(decl, _rendered(decl.target, context, renderer))
        except ValueError as exc:
            raise SetupError("probes", f"{context.get('name')}: {exc}") from None
        if probe.kind in ("exec", "notify"):  # no address: nothing shared to reach
            probes.append(probe)
            continue
        name = shared.get(probe.address) or shared.get(f"localhost:{probe.port}")
        if name is not None:
            raise SetupError("probes", f"probes.{decl.role} checks {probe.address}, the shared socket "
                             f"{name!r}: it reaches whichever replica accepts; give each instance its own "
                             "port (e.g. {{ 9000 + replica }}) and probe that")
        probes.append(probe)
    return {"probes": tuple(probes)}


def _rendered(target: str | tuple[str, ...], context: dict[str, Any], renderer: Any) -> str | tuple[str, ...]:
    """A tcp or http target rendered, or each argument of an exec probe's command."""
    if isinstance(target, tuple):
        return tuple(renderer.text(arg, context) if "{" in arg else arg for arg in target)
    return renderer.text(target, context) if "{" in target else target
