"""A `ProcessSpec` as JSON and back, for the instances an upgrade hands over while they still
run a spec the config no longer has: those a rollout (a reload's, a rolling restart onto a
new spec) has not restarted yet, and those stopping to restart onto a new one. The successor
expands only the config on disk, so without this it would show (and restart them with) the
new spec while their old process runs. Pure.

Frozen dataclasses, tuples and the JSON scalars are all a spec is made of; a dataclass is
written with its class's name, and read back only if it is one of orch's own.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .state import HandoverError

CLASS, TUPLE, DICT = "@class", "@tuple", "@dict"


def encode(value: Any) -> Any:
    """`value` (a spec, or any part of one) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {CLASS: f"{cls.__module__}:{cls.__qualname__}", **fields}
    if isinstance(value, tuple):
        return {TUPLE: [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {DICT: [[encode(k), encode(v)] for k, v in value.items()]}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise HandoverError(f"a spec holds a {type(value).__name__}, which the handed-over state cannot keep")


def decode(value: Any) -> Any:
    """What `encode` wrote, as it was; HandoverError for a class that is not orch's."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if TUPLE in value:
        return tuple(decode(item) for item in value[TUPLE])
    if DICT in value:
        return {decode(k): decode(v) for k, v in value[DICT]}
    name = value.get(CLASS)
    cls = _class(name) if isinstance(name, str) else None
    if cls is None:
        raise HandoverError(f"the handed-over state holds a spec part of unknown kind {name!r}")
    return cls(**{key: decode(item) for key, item in value.items() if key != CLASS})


def _class(name: str) -> type | None:
    module, _, qualname = name.partition(":")
    if module != "orchestrator" and not module.startswith("orchestrator."):
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) and dataclasses.is_dataclass(found) else None
