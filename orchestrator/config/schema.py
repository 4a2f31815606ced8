"""`orch schema`: a JSON Schema (draft 2020-12) for workers.toml, generated from `keys.KEYS`
and the value types' own schema fragments, so editor checks and the validator cannot drift.

What a schema cannot say (rendering, soft < hard memory, duplicate names...) stays with
`orch check`; the schema never rejects a file the validator accepts.
"""

from __future__ import annotations

import json
from typing import Any

from .keys import KEYS, SUB_TABLES, Key

# Checks load.py makes beyond a key's parser, in schema form.
_REFINED: dict[str, dict[str, Any]] = {
    "env": {"additionalProperties": {"type": ["string", "number", "boolean"]}},
    "matrix": {"additionalProperties": {"anyOf": [
        {"type": "array", "minItems": 1}, {"type": "string"}]}},
}
_HAS_PROGRAM = {"anyOf": [{"required": ["command"]}, {"required": ["target"]}]}
_TEMPLATE_RULES = [
    {"not": {"required": ["command", "target"]}},  # either command or target, not both
    {"if": {"properties": {"shell": {"const": True}}, "required": ["shell"]},
     "then": {"properties": {"command": {"type": "string"}}}},  # shell needs a string command
]


def _property(key: Key) -> dict[str, Any]:
    """The schema of one key: its type's fragment, refinements, doc and default."""
    prop: dict[str, Any] = {**key.type.schema, **_REFINED.get(key.name, {})}
    if key.name in SUB_TABLES:
        prop = _table([k for k in KEYS if k.path.startswith(key.path + ".")], key.path + ".")
    prop["description"] = f"{key.doc} ({key.kind.value})"
    if key.default is not None and key.default not in ({}, []):
        prop["default"] = key.default
    return prop


def _table(keys: list[Key], prefix: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "properties": {k.path[len(prefix):]: _property(k) for k in keys}}


def json_schema() -> dict[str, Any]:
    """The whole schema as a JSON-ready dict."""
    direct = [k for k in KEYS if k.section == "workers" and k.path.count(".") == 2]  # not sockets.*.KEY
    template = _table(direct, "workers.*.")
    template["allOf"] = _TEMPLATE_RULES
    defaults = _table([k for k in direct if not k.template_only], "workers.*.")
    defaults["allOf"] = _TEMPLATE_RULES
    settings = _table([k for k in KEYS if k.section == "orchestrator"], "orchestrator.")
    socket = _table([k for k in KEYS if k.section == "sockets"], "sockets.*.")
    socket["required"] = ["bind"]
    hook = _table([k for k in KEYS if k.section == "hooks"], "hooks.*.")
    hook["required"] = ["on", "command"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "orch workers.toml",
        "description": "A fleet of processes for orch: templates x matrices x replicas.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "orchestrator": {**settings, "description": "settings of the master"},
            "vars": {"type": "object", "description": "values every template can use"},
            "defaults": {"$ref": "#/$defs/defaults"},
            "sockets": {"type": "object", "additionalProperties": socket,
                        "description": "listening sockets the master holds: [sockets.NAME]"},
            "workers": {"type": "object", "additionalProperties": {"$ref": "#/$defs/template"},
                        "description": "one table per template: [workers.NAME]"},
            "hooks": {"type": "array", "items": hook,
                      "description": "commands run on events: [[hooks]]"},
        },
        # A template needs command or target, unless [defaults] gives one to every template.
        "if": {"properties": {"defaults": _HAS_PROGRAM}, "required": ["defaults"]},
        "else": {"properties": {"workers": {"additionalProperties": _HAS_PROGRAM}}},
        "$defs": {
            "template": {**template, "description": "a template: [workers.NAME]"},
            "defaults": {**defaults, "description": "merged into every [workers.*] table"},
        },
    }


def render() -> str:
    """The schema as `orch schema` prints it."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
