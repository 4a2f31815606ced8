"""The `after` key of a template: the templates whose instances must be ready (or, for a
one-shot with `restart = "never"`, have exited 0) before its own start. Parsed here, and
checked across the whole config (unknown names, a template after itself, cycles) as located
problems; supervise/order.py decides at run time who may start."""

from __future__ import annotations

from typing import Callable, Iterable

from .fields import ValueType, type_name


def parse_after(v: object) -> tuple[str, ...]:
    """`["redis", "migrate"]` -> ("redis", "migrate"): template names, each once."""
    if not isinstance(v, list) or not all(isinstance(name, str) and name for name in v):
        raise ValueError(f"expected an array of template names like [\"redis\", \"migrate\"], got {type_name(v)}")
    doubled = sorted({name for name in v if v.count(name) > 1})
    if doubled:
        raise ValueError(f"{', '.join(map(repr, doubled))} named twice")
    return tuple(v)


AFTER = ValueType("array of template names", parse_after,
                  {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True})


def order_problems(after: dict[str, tuple[str, ...]], defined: Iterable[str]) -> list[tuple[str, str]]:
    """(template, message) per problem of the templates' `after` lists (pure): an unknown
    name, a template after itself, and each cycle once, on its first template by name.
    `defined` is every template name, valid or not (an invalid one is reported already)."""
    known = set(defined)
    found: list[tuple[str, str]] = []
    for name in sorted(after):
        for other in after[name]:
            if other == name:
                found.append((name, f"{name!r} cannot start after itself"))
            elif other not in known:
                found.append((name, f"unknown template {other!r} in after"))
    seen: set[str] = set()
    for name in sorted(after):
        cycle = _cycle_from(name, after.get, seen)
        if cycle:
            found.append((cycle[0], "a cycle in after: " + " -> ".join(cycle + [cycle[0]])))
    return found


def _cycle_from(start: str, edges: Callable[[str], tuple[str, ...] | None], seen: set[str]) -> list[str]:
    """A cycle reachable from `start` not yet reported (depth first, iterative), rotated to
    begin at its smallest name; [] when none. `seen` collects the names fully explored."""
    path: list[str] = []
    on_path: dict[str, int] = {}
    stack: list[tuple[str, int]] = [(start, 0)]
    while stack:
        node, i = stack.pop()
        if i == 0:
            if node in seen:
                continue
            on_path[node] = len(path)
            path.append(node)
        nexts = [n for n in (edges(node) or ()) if n != node]
        if i < len(nexts):
            stack.append((node, i + 1))
            nxt = nexts[i]
            if nxt in on_path:
                cycle = path[on_path[nxt]:]
                seen.update(path)
                low = cycle.index(min(cycle))
                return cycle[low:] + cycle[:low]
            if nxt not in seen:
                stack.append((nxt, 0))
        else:
            seen.add(node)
            path.pop()
            del on_path[node]
    return []
