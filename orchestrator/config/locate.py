"""Locating problems: dotted key paths mapped to the lines of a TOML file, and the collector
that turns a key path and a message into a `ConfigProblem` with file and line."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigProblem


class Problems:
    """Collects problems against one file, locating each key path in its text."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.text = text
        self.items: list[ConfigProblem] = []
        self._lines: dict[str, int] | None = None

    @property
    def lines(self) -> dict[str, int]:
        if self._lines is None:  # only a file with problems pays for locating keys
            self._lines = locate_keys(self.text)
        return self._lines

    def add(self, keypath: str, message: str) -> None:
        self.items.append(ConfigProblem(str(self.path), keypath, message, self.line_of(keypath)))

    def line_of(self, keypath: str) -> int | None:
        parts = keypath.split(".")
        while parts:
            line = self.lines.get(".".join(parts))
            if line:
                return line
            parts.pop()
        return None

    def parsed(self, prefix: str, table: dict, parsers: dict[str, Any]) -> dict[str, Any]:
        """Each value of `table` through its parser in `parsers` (key -> parse function): the
        clean values; an unknown key or a value its parser refuses is a problem at
        `prefix` + key, and is left out."""
        clean: dict[str, Any] = {}
        for key, raw in table.items():
            parse = parsers.get(key)
            if parse is None:
                self.unknown(prefix, key, parsers)
                continue
            try:
                clean[key] = parse(raw)
            except ValueError as exc:
                self.add(f"{prefix}{key}", str(exc))
        return clean

    def unknown(self, prefix: str, key: str, known: Any) -> None:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.add(f"{prefix}{key}", f"unknown key {key!r}{hint}")


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")
_INLINE_KEY = re.compile(r"[{,]\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")


def _split_key(key: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", key)]


def locate_keys(text: str) -> dict[str, int]:
    """Map dotted key paths to the 1-based line that defines them (best effort, tables and inline tables)."""
    found: dict[str, int] = {}
    table: list[str] = []
    arrays: dict[str, int] = {}  # [[hooks]] tables seen so far: the third is hooks.2
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            if line.lstrip().startswith("[["):
                arrays[".".join(table)] = arrays.get(".".join(table), -1) + 1
                table = table + [str(arrays[".".join(table)])]
            for depth in range(1, len(table) + 1):  # [worker.a] also locates "worker"
                found.setdefault(".".join(table[:depth]), number)
            continue
        key = _KEY.match(line)
        if not key:
            continue
        path = table + _split_key(key.group(1))
        found.setdefault(".".join(path), number)
        rest = line[key.end():]
        for inner in _INLINE_KEY.finditer(rest):
            found.setdefault(".".join(path + [inner.group(1).strip("\"")]), number)
    return found
