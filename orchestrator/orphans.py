"""Ending what a crashed master left behind (filled in by the limits issue)."""

from __future__ import annotations

from pathlib import Path


def end_leftovers(pidfile: Path) -> None:
    """Placeholder until the state file exists."""
