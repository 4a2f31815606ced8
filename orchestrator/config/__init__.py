"""Configuration: keys and their parsers, loading workers.toml, located problems.

Only what every client command needs lives here, so that `orch status` on a 5,000-template
config imports neither the TOML parser nor the validation (see cli.py)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG_NAME = "workers.toml"


def find_config(explicit: str | None) -> Path:
    """The config path from `-c`, then `$ORCH_CONFIG`, then `./workers.toml`."""
    return Path(explicit or os.environ.get("ORCH_CONFIG") or DEFAULT_CONFIG_NAME).absolute()
