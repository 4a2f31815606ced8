"""A template's matrix: the product of its axes (each a list, or a Jinja expression giving
one), less its `exclude` matches, plus its `include` entries, as parameter dicts (pure)."""

from __future__ import annotations

import itertools
import math
from typing import Any

from ..config.load import Template
from .renderer import Renderer, template_errors


def combinations(template: Template, variables: dict[str, Any], renderer: Renderer,
                  problem: Any) -> list[dict[str, Any]] | None:
    """The matrix product, less `exclude` matches, plus `include`, as parameter dicts."""
    axes: list[tuple[str, list[Any]]] = []
    context = {**variables, "template": template.name}
    for axis, raw in template.matrix:
        keypath = f"workers.{template.name}.matrix.{axis}"
        try:
            values = renderer.value(raw, context) if isinstance(raw, str) else raw
        except template_errors() as exc:
            problem(keypath, f"cannot render: {exc}")
            return None
        if isinstance(values, (tuple, range)):
            values = list(values)
        if not isinstance(values, list):
            problem(keypath, f"the matrix axis must be a list, {raw!r} gave {type(values).__name__}")
            return None
        if not values:  # (a literal empty list is refused by config/load.py already)
            problem(keypath, f"empty matrix axis: {raw!r} gave no values")
            return None
        axes.append((axis, values))
    count = math.prod(len(v) for _, v in axes)
    if count > 1_000_000:
        problem(f"workers.{template.name}.matrix", f"the matrix has {count} combinations")
        return None
    names = [a for a, _ in axes]
    if not _entries_name_axes(template, names, problem):
        return None
    combos = [dict(zip(names, values)) for values in itertools.product(*(v for _, v in axes))]
    excludes = [dict(e) for e in template.exclude]
    combos = [c for c in combos if not any(_matches(c, e) for e in excludes)]
    for extra in template.include:
        extra_dict = dict(extra)
        if extra_dict not in combos:
            combos.append(extra_dict)
    return combos


def _entries_name_axes(template: Template, axes: list[str], problem: Any) -> bool:
    """`include`/`exclude` entries name only the matrix's axes, and an include names them
    all: a typo would otherwise silently exclude nothing, or add a half-named instance."""
    ok = True
    have = ", ".join(axes) if axes else "none: the template has no matrix"
    for kind, entries in (("exclude", template.exclude), ("include", template.include)):
        for number, entry in enumerate(entries, 1):
            keys = [k for k, _ in entry]
            unknown = [k for k in keys if k not in axes]
            missing = [a for a in axes if a not in keys] if kind == "include" else []
            if unknown:
                message = f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not an axis"
            elif missing:
                message = f"no value for the axis {', '.join(map(repr, missing))}"
            elif not keys:
                message = "an empty entry would exclude every combination"
            else:
                continue
            problem(f"workers.{template.name}.{kind}", f"entry {number}: {message} (axes: {have})")
            ok = False
    return ok


def _matches(combo: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(k in combo and combo[k] == v for k, v in pattern.items())
