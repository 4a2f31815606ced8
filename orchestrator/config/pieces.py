"""Parsing a config again after a small edit: only the tables whose text changed.

At 5,000 `[workers.*]` tables, parsing the whole file took most of a one-line reload (tomli:
about 35 ms of a 280 KB file, twice that under load). `TomlPieces` cuts the text at every
line that starts with `[`, parses each piece on its own, and keeps the result by the piece's
exact text: the next load parses only the pieces it has not seen, and the unchanged tables
come back as the same dict objects, which lets the template cache skip them by identity.

The answer is always the whole-file parser's. A cut inside a multi-line string or array
leaves the piece before it unterminated, so that piece fails to parse; anything the merge
cannot prove the whole file would accept (an array of tables, a table defined twice, a
header reaching into a table made by dotted keys or an inline table, two definitions of one
key) raises `_Unsure`. Either way the whole file is parsed instead, which gives its result
or its located error. A file whose pieces failed while the whole parsed (say, a multi-line
array with lines starting with `[`) is not cut again: it is parsed whole from then on.
"""

from __future__ import annotations

import re
from typing import Any

import tomli as tomllib  # the one TOML import: the stdlib's parser, compiled (2.4x faster on 500 tables)

_HEADER = re.compile(r"^[ \t]*\[", re.M)
_BARE = re.compile(r"\[[ \t]*([A-Za-z0-9_-]+(?:[ \t]*\.[ \t]*[A-Za-z0-9_-]+)*)[ \t]*\][ \t]*(?:#[^\n]*)?\r?\n?")

Path_ = tuple[str, ...]


class _Unsure(Exception):
    """The pieces cannot show that they mean what the whole file means."""


class TomlPieces:
    """A parser with a memory of the last load's pieces (one per file it is used for)."""

    def __init__(self) -> None:
        self.pieces: dict[str, tuple[Path_, dict]] = {}
        self.whole = False  # the pieces failed where the whole file parsed: never cut again

    def loads(self, text: str) -> dict[str, Any]:
        """What `tomllib.loads(text)` returns (and the same error when it raises). Its tables
        are shared with the next call's result: read them, never change them."""
        if not self.whole:
            try:
                return self._loads(text)
            except (_Unsure, tomllib.TOMLDecodeError, RecursionError):
                data = tomllib.loads(text)  # raises the located error of a broken file
                self.whole, self.pieces = True, {}
                return data
        return tomllib.loads(text)

    def _loads(self, text: str) -> dict[str, Any]:
        cuts = [m.start() for m in _HEADER.finditer(text)]
        if not cuts or cuts[0] != 0:
            cuts.insert(0, 0)
        cuts.append(len(text))
        known, fresh = self.pieces, {}
        merge = _Merge()
        for start, end in zip(cuts, cuts[1:]):
            piece = text[start:end]
            parsed = known.get(piece) or fresh.get(piece) or _parse(piece, start == 0)
            fresh[piece] = parsed
            merge.add(*parsed)
        self.pieces = fresh
        return merge.result


def _parse(piece: str, first: bool) -> tuple[Path_, dict]:
    """(header path, the table's own keys) of one piece."""
    data = tomllib.loads(piece)
    stripped = piece.lstrip(" \t")
    if not stripped.startswith("["):
        if not first:
            raise _Unsure("text before a header that is not the file's start")
        return (), data
    if stripped.startswith("[["):
        raise _Unsure("an array of tables")
    bare = _BARE.match(stripped)
    if bare is not None:  # the usual [workers.name]: no second parse
        path = [key.strip(" \t") for key in bare.group(1).split(".")]
    else:  # quoted keys: what the parser makes of the header line alone
        path, node = [], tomllib.loads(stripped.split("\n", 1)[0].rstrip("\r"))
        while node:
            if len(node) != 1:
                raise _Unsure("header")
            (key, node), = node.items()
            path.append(key)
    body: Any = data
    for key in path:
        body = body[key] if isinstance(body, dict) and len(body) == 1 else None
        if not isinstance(body, dict):
            raise _Unsure("header")
    return tuple(path), body


class _Merge:
    """Puts the pieces' tables where the whole file would, refusing anything TOML forbids."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}
        self.defined: set[Path_] = set()   # tables a header defined
        self.implicit: set[Path_] = set()  # tables made only as the parents of a header's table
        self.owned: set[int] = {id(self.result)}  # dicts made here; the rest belong to the cache

    def add(self, path: Path_, body: dict) -> None:
        if not path:
            if self.result:
                raise _Unsure("root keys after a header")
            self.result = dict(body)
            self.owned.add(id(self.result))
            return
        if path in self.defined:
            raise _Unsure("a table defined twice")
        node = self.result
        for depth, key in enumerate(path[:-1], 1):
            node = self._descend(node, key, path[:depth])
        existing = node.get(path[-1])
        if existing is None:
            node[path[-1]] = body  # shared with the cache until a later header reaches into it
        elif isinstance(existing, dict) and path in self.implicit and not existing.keys() & body.keys():
            existing.update(body)  # made here (implicit), so ours to change
            self.implicit.discard(path)
        else:
            raise _Unsure("a key defined twice")
        self.defined.add(path)

    def _descend(self, node: dict, key: str, path: Path_) -> dict:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
            self.owned.add(id(child))
            self.implicit.add(path)
        elif not isinstance(child, dict) or (path not in self.defined and path not in self.implicit):
            raise _Unsure("a header inside a value, an inline table or a dotted-key table")
        elif id(child) not in self.owned:
            child = node[key] = dict(child)
            self.owned.add(id(child))
        return child
