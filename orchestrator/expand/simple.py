"""Plain substitutions without Jinja: text with only `{{ name }}`, `{{ name[i] }}` and
`{{ name[i:j] }}` of string or integer values (a matrix's name and command, the common
case) renders here, exactly as Jinja would, or not at all (None: Jinja renders it).

Measured: a 500-cell matrix naming each instance `s{{ t[-5:] }}` with the command
`["/bin/sleep", "{{ t }}"]` expanded in 85-125 ms through Jinja, plus 125 ms to import it,
all before the first spawn; these substitutions take under 1 ms a hundred."""

from __future__ import annotations

import re
from typing import Any

_SUBSTITUTION = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*"
                           r"(\[\s*(-?\d+)?\s*(:)?\s*(-?\d+)?\s*\])?\s*\}\}")

# Names Jinja reads as a literal, an operator or a reference of its own, never from the context
_JINJA_WORDS = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is",
                          "if", "else", "self"})


def substitute(source: str, context: dict[str, Any]) -> str | None:
    """`source` rendered with `context`, or None when only Jinja may say what it renders to
    (other syntax, a name not in `context`, another type, an index out of range)."""
    if source.endswith("\n") or "{%" in source or "{#" in source:
        return None  # Jinja drops one trailing newline; statements and comments are its own
    parts: list[str] = []
    end = 0
    for match in _SUBSTITUTION.finditer(source):
        literal = source[end:match.start()]
        if "{{" in literal or literal.endswith("{"):  # Jinja's `{{` would begin a character earlier
            return None
        value = _value(context, *match.groups())
        if value is None:
            return None
        parts += (literal, value)
        end = match.end()
    if "{{" in source[end:]:
        return None
    parts.append(source[end:])
    return "".join(parts)


def _value(context: dict[str, Any], name: str, bracket: str | None, index: str | None, colon: str | None,
           stop: str | None) -> str | None:
    if name in _JINJA_WORDS:
        return None
    value = context.get(name)
    kind = type(value)
    if kind is int and bracket is None:
        return str(value)
    if kind is not str:
        return None  # bool, float, None, a list or an absent name: Jinja's own text or error
    if bracket is None:
        return value
    if colon is not None:
        return value[int(index) if index else None:int(stop) if stop else None]
    if index is None or stop is not None:
        return None  # `t[]`, `t[1 2]`: Jinja's syntax errors
    i = int(index)
    return value[i] if -len(value) <= i < len(value) else None  # out of range: Jinja's Undefined
