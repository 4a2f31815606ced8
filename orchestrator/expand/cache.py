"""What the last successful expansion made, so a reload renders only what can have changed:
an unchanged template reuses its specs, and a template whose matrix alone changed reuses
the spec of every cell (parameters and replica) it had before (pure)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config.load import Config, Template
from .production import reads_host
from .spec import ProcessSpec

# The keys that choose cells rather than shape them: a template that differs from the last
# one only in these renders each cell exactly as before, so a cell it had keeps its spec.
_CELL_CHOOSERS = ("matrix", "include", "exclude")
Cell = tuple[tuple[tuple[str, Any, type], ...], int]  # (parameters in axis order, with types; replica)


class ExpansionCache:
    """The specs each template gave at the last load, so a reload re-renders only the templates
    that changed (or all of them when [vars] changed): reload work follows the edit's size."""

    def __init__(self) -> None:
        self.vars: Any = None
        self.sockets: Any = None
        self.folder: Path | None = None
        self.templates: dict[str, tuple[Template, list[ProcessSpec]]] = {}

    def seed(self, config: Config, specs: list[ProcessSpec]) -> None:
        """Remember an expansion made without a cache (the one `orch up` starts from)."""
        by_template: dict[str, list[ProcessSpec]] = {t.name: [] for t in config.templates}
        for spec in specs:
            by_template[spec.template].append(spec)
        self.vars, self.folder, self.sockets = config.vars, config.folder, config.sockets
        self.templates = {t.name: (t, by_template[t.name]) for t in config.templates}

    def usable(self, config: Config) -> bool:
        """Whether this cache's specs were rendered with the same vars, folder and sockets."""
        return self.vars == config.vars and self.folder == config.folder and self.sockets == config.sockets

    def get(self, template: Template) -> list[ProcessSpec] | None:
        """The specs of an unchanged template (ask `usable` once per load first)."""
        cached = self.templates.get(template.name)
        if cached is None or reads_host(template):
            return None  # env files and the user database are read again at every load
        return cached[1] if same(cached[0], template) else None

    def cells(self, template: Template) -> dict[Cell, ProcessSpec] | None:
        """The last specs of a template whose matrix (include, exclude) alone changed, by cell;
        None when anything else changed, or a parameter value cannot be a key (a table)."""
        cached = self.templates.get(template.name)
        if cached is None or reads_host(template) or not same_but_cells(cached[0], template):
            return None
        try:
            return {cell_key(spec.params, spec.replica): spec for spec in cached[1]}
        except TypeError:  # unhashable matrix values (inline tables, lists)
            return None


def cell_key(params: Any, replica: int) -> Cell:
    """A cell's key: the types count, as 1, 1.0 and true are equal but do not render alike."""
    return tuple((k, v, type(v)) for k, v in params), replica


def cached_cell(cells: dict[Cell, ProcessSpec] | None, params: dict[str, Any], replica: int) -> ProcessSpec | None:
    """The spec `cells` holds for these parameters and replica, if any."""
    if cells is None:
        return None
    try:
        return cells.get(cell_key(params.items(), replica))
    except TypeError:  # an unhashable value: render it
        return None


def same_but_cells(old: Template, new: Template) -> bool:
    """Whether the two differ at most in the keys that choose the cells."""
    return all(same(getattr(old, f.name), getattr(new, f.name))
               for f in dataclasses.fields(Template) if f.name not in _CELL_CHOOSERS)


def same(old: Any, new: Any) -> bool:
    """Equal, types included: 1 == 1.0 == True, but they render "1", "1.0" and "True". The
    repr is made only for values that differ as objects yet compare equal (a table that was
    parsed again): the config's TemplateCache hands an unchanged table's very object back."""
    return old is new or (old == new and repr(old) == repr(new))
