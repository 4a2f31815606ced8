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
    shared = {name: info["bind"] for name, info in context.get("sockets", {}).items()}
    probes: list[Probe] = []
    for decl in template.policy.probes:
        try:
            probe = resolve(decl, _rendered(decl.target, context, renderer))
        except ValueError as exc:
            raise SetupError("probes", f"{context.get('name')}: {exc}") from None
        if probe.kind in ("exec", "notify"):  # no address: nothing shared to reach
            probes.append(probe)
            continue
        name = next((n for n, bind in shared.items() if _reaches(bind, probe.host, probe.port)), None)
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


WILDCARDS = ("0.0.0.0", "::", "")


def _reaches(bind: str, host: str, port: int) -> bool:
    """Whether a probe of host:port lands on the socket bound at `bind` ("HOST:PORT",
    "[V6]:PORT", a wildcard address, or unix:PATH, which no tcp or http probe reaches)."""
    if bind.startswith("unix:"):
        return False
    bound_host, _, bound_port = bind.rpartition(":")
    bound_host = bound_host.strip("[]")
    if not bound_port.isdigit() or int(bound_port) != port:
        return False
    return bound_host in WILDCARDS or bound_host == host or (bound_host == "localhost" and host == "127.0.0.1")
