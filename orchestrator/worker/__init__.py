"""The Python worker API (runs inside children): subclass `Worker` and point a template's
`target` at it. This package never imports the master's side (supervise/, spawn/)."""

from .runtime import Worker, listen_sockets, load_target, main, notify

__all__ = ["Worker", "listen_sockets", "load_target", "main", "notify"]
