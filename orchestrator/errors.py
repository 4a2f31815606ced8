"""Errors users can act on: every problem names the file, the key path and the line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file."""

    file: str
    keypath: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.keypath}:" if self.keypath else ""
        return f"{where}:{key} {self.message}"


class ConfigError(Exception):
    """A config file that cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class OrchError(Exception):
    """An operation failed (exit code 1)."""


class NoMasterError(OrchError):
    """No master is running for this config (exit code 3)."""
