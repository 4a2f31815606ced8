"""The Jinja side of expansion: compiled templates cached per load, values that keep their
type, commands split with each value kept in its argv element, shell commands escaped.
Every render runs under the budget (budget.py) and in the bounded sandbox (sandbox.py);
whatever it raises comes out as a jinja TemplateError or a RenderError with one line."""

from __future__ import annotations

import functools
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from .budget import MEMORY_HEADROOM, RenderError, begin_render, check_size, end_render, set_up
from .simple import substitute

_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(.*)\}\}\s*$", re.DOTALL)
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")


class _Placeholders:
    """Jinja `finalize` hook: remembers each output value and emits a placeholder instead."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"\x00{len(self.values) - 1}\x00"


def template_errors() -> tuple[type[BaseException], ...]:
    """What a render raises, for an `except` clause: RenderError, and jinja2.TemplateError
    once Jinja is imported (until a string with Jinja syntax is met, nothing can raise it)."""
    jinja = sys.modules.get("jinja2")
    return (jinja.TemplateError if jinja is not None else _NoJinja, RenderError)


def _guarded(render: Callable[..., Any]) -> Callable[..., Any]:
    """A render method under the budget: marked for the time check, its size checked, and
    any other exception it raises (1/0, 0(), MemoryError, RecursionError) a RenderError."""
    @functools.wraps(render)
    def run(self: Any, source: Any, *args: Any) -> Any:
        if not isinstance(source, str) or "{" not in source:
            return render(self, source, *args)
        begin_render()
        try:
            value = render(self, source, *args)
        except (SplitError, *template_errors()):
            raise
        except MemoryError:
            raise RenderError(f"the value needs more memory than a render may take "
                              f"({MEMORY_HEADROOM >> 20} MiB)") from None
        except Exception as exc:  # noqa: BLE001 - a template's own failure, located by the caller
            raise RenderError(f"{type(exc).__name__}: {_first_line(exc)}") from None
        finally:
            end_render()
        check_size(value)
        return value
    return run


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else "no message"
    return line if len(line) <= 200 else line[:200] + "..."


class SplitError(ValueError):
    """A rendered command shlex cannot split (unbalanced quotes)."""


class _NoJinja(Exception):
    """Never raised: what `template_errors()` names while Jinja is not imported."""


class Renderer:
    """Jinja environments plus a per-load cache, so each template string compiles once.

    The environments are made (and Jinja imported) on the first string with a `{`: a config
    without Jinja syntax never loads it (9 MiB in a bare interpreter)."""

    def __init__(self) -> None:
        self.placeholders = _Placeholders()
        self._cache: dict[tuple[int, str], Any] = {}
        self._splits: dict[str, tuple[str, ...]] = {}
        self._paths: dict[str, str] = {}

    @functools.cached_property
    def plain(self) -> Any:
        with set_up():  # importing Jinja is not the first template's render time
            from jinja2 import StrictUndefined
            from .sandbox import BoundedEnvironment
            return BoundedEnvironment(undefined=StrictUndefined, autoescape=False,
                                      finalize=lambda v: _text(v) if isinstance(v, bool) else v)

    @functools.cached_property
    def argv(self) -> Any:
        with set_up():
            from jinja2 import StrictUndefined
            from .sandbox import BoundedEnvironment
            return BoundedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=self.placeholders)

    def _compiled(self, env: Any, source: str) -> Any:
        key = (id(env), source)
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._cache[key] = env.from_string(source)
        return compiled

    @_guarded
    def text(self, source: str, context: dict[str, Any]) -> str:
        if "{" not in source:
            return source
        plain = substitute(source, context)  # `{{ name }}` and the like, without Jinja (simple.py)
        return plain if plain is not None else self._compiled(self.plain, source).render(context)

    @_guarded
    def value(self, source: Any, context: dict[str, Any]) -> Any:
        """A string that is one `{{ expr }}` keeps the expression's type; other strings render as text."""
        if not isinstance(source, str):
            return source
        whole = _WHOLE_EXPRESSION.match(source)
        if whole and "{{" not in whole.group(1):
            key = (0, whole.group(1))
            expression = self._cache.get(key)
            if expression is None:
                expression = self._cache[key] = self.plain.compile_expression(
                    whole.group(1), undefined_to_none=False)
            value = expression(**context)
            from jinja2 import Undefined
            if isinstance(value, Undefined):
                value._fail_with_undefined_error()  # StrictUndefined: raises UndefinedError
            return value
        return self.text(source, context)

    @_guarded
    def command(self, source: str, context: dict[str, Any]) -> tuple[str, ...]:
        if "{" not in source:
            return tuple(shlex.split(source))
        self.placeholders.values = []
        rendered = self._compiled(self.argv, source).render(context)
        values = self.placeholders.values
        # Instances of one template usually render the same placeholder string: split it once.
        parts = self._splits.get(rendered)
        if parts is None:
            try:
                parts = self._splits[rendered] = tuple(shlex.split(rendered))
            except ValueError as exc:
                raise SplitError(str(exc)) from None
        return tuple(_PLACEHOLDER.sub(lambda m: _text(values[int(m.group(1))]), part)
                     if "\x00" in part else part for part in parts)

    def path(self, folder: Path, source: str, context: dict[str, Any]) -> str:
        rendered = self.text(source, context)
        resolved = self._paths.get(rendered)
        if resolved is None:
            resolved = self._paths[rendered] = str((folder / rendered).resolve())
        return resolved

    @_guarded
    def shell(self, source: str, context: dict[str, Any]) -> str:
        """A `shell = true` command: each value escaped for the quoting it sits in."""
        self.placeholders.values = []
        rendered = self._compiled(self.argv, source).render(context)
        return shell_substitute(rendered, [_text(v) for v in self.placeholders.values])


def shell_substitute(rendered: str, values: list[str]) -> str:
    """Put values back into a shell command so the shell reads each as literal text: bare
    values are shell-quoted, values inside '...' or "..." are escaped for those quotes (pure)."""
    out: list[str] = []
    quote = ""  # "", "'" or '"': the quoting in force at this point of the template
    i = 0
    while i < len(rendered):
        char = rendered[i]
        if char == "\x00":
            end = rendered.index("\x00", i + 1)
            value = values[int(rendered[i + 1:end])]
            if quote == "'":
                out.append(value.replace("'", "'\\''"))
            elif quote == '"':
                out.append(re.sub(r'([$`"\\])', r"\\\1", value))
            else:
                out.append(shlex.quote(value))
            i = end + 1
            continue
        if char == "\\" and quote != "'" and i + 1 < len(rendered):
            out.append(rendered[i:i + 2])
            i += 2
            continue
        if char in "'\"" and (not quote or quote == char):
            quote = "" if quote else char
        out.append(char)
        i += 1
    return "".join(out)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
