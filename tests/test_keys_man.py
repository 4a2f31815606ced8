"""man/workers.toml.5 documents exactly the keys of the table, with their type, default,
kind and doc: generated from it, and checked against it in both directions."""

from __future__ import annotations

import re

from conftest import ROOT

from orchestrator.config.docs import render
from orchestrator.config.keys import KEYS

PAGE = ROOT / "man" / "workers.toml.5"


def test_the_page_is_what_the_table_generates():
    assert PAGE.read_text() == render(), \
        "man/workers.toml.5 is stale: python -m orchestrator.config.docs > man/workers.toml.5"


def _entries(text: str) -> dict[str, str]:
    """Section-qualified key -> its entry text, read from the page itself."""
    found, section = {}, ""
    for block in re.split(r"^(?=\.SH |\.TP\n)", text, flags=re.M):
        header = re.match(r"\.SH \[(orchestrator|workers\.NAME|sockets\.NAME|\[hooks\])\]", block)
        if header:
            section = {"orchestrator": "orchestrator", "workers.NAME": "workers.*",
                       "[hooks]": "hooks.*"}.get(header.group(1), "sockets.*")
        entry = re.match(r"\.TP\n\.B (\S+)\n", block)
        if entry and section:
            found[f"{section}.{entry.group(1).replace(chr(92) + '-', '-')}"] = block
    return found


def test_every_key_is_documented_and_every_documented_key_exists():
    entries = _entries(PAGE.read_text())
    assert set(entries) == {k.path for k in KEYS}
    for key in KEYS:
        text = entries[key.path].replace("\\-", "-").replace("\\e", "\\")
        assert key.kind.value in text and key.type.name in text, key.path
        assert key.doc[1:] in text and f"= {key.example}" in text, key.path
