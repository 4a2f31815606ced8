"""`env_file`: KEY=value files read at expansion, their contents part of an instance's identity.

The format is systemd's EnvironmentFile= and docker's --env-file, without shell expansion:
one assignment per line, `#` or `;` comment lines, blank lines, an optional `export `
before the name; a value may be bare (surrounding whitespace trimmed, taken literally,
`#` included), in single quotes (literal, may span lines) or in double quotes (`\\"`,
`\\\\`, `\\$`, `\\``, `\\n` and `\\t` escapes; may span lines). `$VAR` is never expanded.

Values are secrets: no message here quotes one; an error names the file and line only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$", "`": "`"}
MAX_ENV_FILE = 1 << 20  # exec takes 2 MiB of argv and env in all; expansion checks the total


@dataclass(frozen=True)
class EnvFile:
    """One file an instance reads: its path (rendered, absolute), whether it may be missing,
    and a digest of its contents ("" when missing) that the instance's hash covers."""

    path: str
    optional: bool
    digest: str


class EnvFileError(ValueError):
    """A file that cannot be read or parsed; the message names it and never a value."""


def parse_env(text: str, where: str = "") -> list[tuple[str, str]]:
    """The assignments of an env file, in order (pure). Raises EnvFileError with the line."""
    found: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].lstrip()
        i += 1
        if not line.strip() or line[0] in "#;":
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        name, eq, rest = line.partition("=")
        name = name.rstrip()
        if not eq or not _NAME.fullmatch(name):
            raise EnvFileError(f"{where}:{number}: expected KEY=value (a name of letters, digits and _)")
        rest = rest.lstrip()
        if rest[:1] in ("'", '"'):
            value, i = _quoted(rest, lines, i, f"{where}:{number}")
        else:
            value = rest.rstrip()
        found.append((name, value))
    return found


def _quoted(rest: str, lines: list[str], i: int, where: str) -> tuple[str, int]:
    """A quoted value that may go on over the next lines; (value, index of the next line)."""
    quote, text, out = rest[0], rest[1:], []
    while True:
        j = 0
        while j < len(text):
            char = text[j]
            if char == quote:
                if text[j + 1:].strip() and not text[j + 1:].lstrip().startswith("#"):
                    raise EnvFileError(f"{where}: text after the closing quote")
                return "".join(out), i
            if char == "\\" and quote == '"' and j + 1 < len(text):
                out.append(_ESCAPES.get(text[j + 1], "\\" + text[j + 1]))
                j += 2
                continue
            out.append(char)
            j += 1
        if i >= len(lines):
            raise EnvFileError(f"{where}: the quote is never closed")
        out.append("\n")
        text = lines[i]
        i += 1


def read_env_file(path: Path, optional: bool) -> tuple[EnvFile, list[tuple[str, str]]]:
    """Read and parse one file: (its EnvFile, its assignments). A missing optional file is
    empty; anything else unreadable is an EnvFileError naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if optional:
            return EnvFile(str(path), True, ""), []
        raise EnvFileError(f"{path}: no such file (a leading '-' makes a missing file acceptable)") from None
    except OSError as exc:
        raise EnvFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_ENV_FILE:
        raise EnvFileError(f"{path}: {len(data):,} bytes; an env file may have up to {MAX_ENV_FILE:,}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvFileError(f"{path}: not UTF-8 (byte {exc.start})") from None
    if "\0" in text:
        raise EnvFileError(f"{path}: contains a NUL character")
    digest = hashlib.sha256(data).hexdigest()[:16]
    return EnvFile(str(path), optional, digest), parse_env(text.replace("\r\n", "\n"), str(path))


class EnvFiles:
    """The files of one expansion, each read once however many instances name it."""

    def __init__(self) -> None:
        self._read: dict[tuple[str, bool], tuple[EnvFile, list[tuple[str, str]]] | EnvFileError] = {}

    def load(self, written: list[tuple[str, bool]]) -> tuple[tuple[EnvFile, ...], tuple[tuple[str, str], ...]]:
        """(files, merged assignments: later files win) of rendered absolute paths."""
        files, merged = [], {}
        for path, optional in written:
            key = (path, optional)
            hit = self._read.get(key)
            if hit is None:
                try:
                    hit = read_env_file(Path(path), optional)
                except EnvFileError as exc:
                    hit = exc
                self._read[key] = hit
            if isinstance(hit, EnvFileError):
                raise hit
            files.append(hit[0])
            merged.update(hit[1])
        return tuple(files), tuple(sorted(merged.items()))


def env_file_paths(specs: object) -> tuple[Path, ...]:
    """Every env file the specs read (missing optional ones too): the master watches them."""
    return tuple(sorted({Path(f.path) for spec in specs for f in getattr(spec, "env_files", ())}))
