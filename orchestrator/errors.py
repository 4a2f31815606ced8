"""Errors users can act on: every problem names the file, the key path and the line."""

from __future__ import annotations

class ConfigProblem:
    """One thing wrong with a config file. A plain class (value equality, hashable, frozen by
    convention) rather than a dataclass: every CLI call imports this module, and dataclasses
    brings inspect and ast with it."""

    __slots__ = ("file", "keypath", "message", "line")

    def __init__(self, file: str, keypath: str, message: str, line: int | None = None) -> None:
        self.file, self.keypath, self.message, self.line = file, keypath, message, line

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
