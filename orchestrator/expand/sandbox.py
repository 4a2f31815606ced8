"""Jinja's sandbox with operators bounded: what one C-level operation would do at once
(`7 ** (7 ** 98)`, `'x' * 10 ** 9`, `"%999999999d" % 1`) is refused before it runs, since
no signal can interrupt it (budget.py bounds everything that runs as Python). Imported
only with Jinja, on the first string that has a `{`."""

from __future__ import annotations

import re
from typing import Any

from jinja2.sandbox import SandboxedEnvironment

from .budget import VALUE_CHARS, RenderError

MAX_INT_BITS = 1 << 17  # the largest integer an operator may make: about 40,000 digits
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\*|\d{7,})|%[-#0 +]*\d*\.(\*|\d{7,})")


class BoundedEnvironment(SandboxedEnvironment):
    """SandboxedEnvironment whose `*`, `**`, `%` and `+` check sizes first."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
            _check_product(right, left)
        elif operator == "%" and isinstance(left, str) and _FORMAT_WIDTH.search(left):
            raise RenderError("a % format with a width or precision over 6 digits (or *) is refused")
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            if len(left) + len(right) > VALUE_CHARS:
                raise RenderError(f"{operator} would make {len(left) + len(right):,} items; "
                                  f"a value may have up to {VALUE_CHARS:,}")
        return super().call_binop(context, operator, left, right)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_power(base: Any, exponent: Any) -> None:
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        if base.bit_length() * exponent > MAX_INT_BITS:
            raise RenderError(f"{_short(base)} ** {_short(exponent)} is too large "
                              f"(up to {MAX_INT_BITS:,} bits)")


def _check_product(left: Any, right: Any) -> None:
    if _is_int(left) and _is_int(right):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise RenderError(f"a product of more than {MAX_INT_BITS:,} bits is refused")
    elif isinstance(left, (str, list, tuple)) and _is_int(right) and len(left) * right > VALUE_CHARS:
        raise RenderError(f"repeating {len(left):,} items {_short(right)} times is over the "
                          f"{VALUE_CHARS:,} a value may have")


def _short(number: int) -> str:
    text = str(number) if number.bit_length() < 200 else f"a {number.bit_length()}-bit number"
    return text
