"""Example handler for configs/redis-queues.toml: one message (raw bytes) per call."""

import logging

log = logging.getLogger("app.handlers")


def handle(message: bytes) -> None:
    """Return to acknowledge; raise to retry later (dead-lettered after max_attempts)."""
    if message.startswith(b"fail"):
        raise ValueError(f"cannot handle {message!r}")
    print(f"handled {message!r}", flush=True)
