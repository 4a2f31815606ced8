"""Process titles (master, spawner, zygotes, Python workers): the one place setproctitle is
called. Kept free of other imports, so the spawner, a fresh interpreter, stays small."""

from __future__ import annotations

import os


def set_title(title: str) -> None:
    """Name the process in ps. SPT_NOENV keeps setproctitle to the argv area: by default it
    overwrites the environment block too, and /proc/PID/environ (where orch's ORCH_RUN cookie
    sweep and tools like ps e look) would then show the title instead of the environment."""
    added = "SPT_NOENV" not in os.environ
    os.environ.setdefault("SPT_NOENV", "1")
    try:
        import setproctitle
        setproctitle.setproctitle(title)
    except ImportError:
        pass
    finally:
        if added:
            os.environ.pop("SPT_NOENV", None)
