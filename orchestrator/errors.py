"""Errors users can act on: every problem names the file, the key path and the line."""

from __future__ import annotations

class ConfigProblem:
    """One thing wrong with a config file. A plain class (value equality, hashable, frozen by
    convention) rather than a dataclass: every CLI call imports this module, and dataclasses
    brings inspect and ast with it."""

    __slots__ = ("file", "keypath", "message", "line", "family")

    def __init__(self, file: str, keypath: str, message: str, line: int | None = None,
                 family: str | None = None) -> None:
        # A message never echoes a huge value in full: a 2 MiB string in a file stays out
        # of the terminal, the master's log and `orch status`.
        self.file, self.keypath, self.message, self.line = file, _cut(keypath, 200), _cut(message, 500), line
        self.family = family  # problems of one family (one cause, many instances) print once

    def _key(self) -> tuple[str, str, str, int | None]:
        return self.file, self.keypath, self.message, self.line

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfigProblem) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"ConfigProblem(file={self.file!r}, keypath={self.keypath!r}, message={self.message!r}, "
                f"line={self.line!r})")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.keypath}:" if self.keypath else ""
        return f"{where}:{key} {self.message}"


MAX_LINES = 50  # a config error prints at most this many lines; the rest are counted


class ConfigError(Exception):
    """A config file that cannot be used; carries every problem found, not just the first.
    Printed in file and line order, a family of problems (one undefined name in `name`
    over a 30 x 10 matrix) as one line with its count, and at most MAX_LINES lines."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = list(problems)
        self.partial: object = None  # what loaded despite the problems (config/load.py), if usable
        super().__init__(str(self))

    def __str__(self) -> str:
        ordered = sorted(self.problems, key=lambda p: (p.file, p.line or 0))
        lines: list[str] = []
        counts: dict[str, int] = {}
        first: dict[str, int] = {}
        for problem in ordered:
            if problem.family is not None and problem.family in counts:
                counts[problem.family] += 1
                continue
            if problem.family is not None:
                counts[problem.family], first[problem.family] = 1, len(lines)
            lines.append(str(problem))
        for family, count in counts.items():
            if count > 1:
                lines[first[family]] += f" (and {count - 1} more instances like it)"
        if len(lines) > MAX_LINES:
            lines[MAX_LINES - 1:] = [f"... and {len(lines) - MAX_LINES + 1} more problems"]
        return "\n".join(lines)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class OrchError(Exception):
    """An operation failed (exit code 1)."""


class NoMasterError(OrchError):
    """No master is running for this config (exit code 3)."""
