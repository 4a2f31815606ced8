"""Tool adapters, by name, in report order. Imported lazily: `python -m bench.tools.floor`
runs the floor daemon without loading the other adapters."""

from __future__ import annotations

import importlib

from .base import Tool, Unsupported

TOOLS: dict[str, str] = {
    "floor": "floor:Floor", "orch": "orch:Orch", "supervisord": "supervisord:Supervisord", "circus": "circus:Circus",
}


def tool_class(name: str) -> type[Tool]:
    """The adapter class for a tool name (a key of TOOLS)."""
    module, _, cls = TOOLS[name].partition(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)


__all__ = ["TOOLS", "Tool", "Unsupported", "tool_class"]
