"""`orch events`: the master's recent events, and with -f every new one, a line each."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import OrchError
from .link import client_for

EXIT_OK = 0
_SHOWN = ("ts", "seq", "kind", "instance", "template")


def cmd_events(args: argparse.Namespace, path: Path) -> int:
    client = client_for(args, path)
    try:
        reply = client.call("events", patterns=args.patterns or None, follow=args.follow, lines=args.lines)
        for rec in reply["events"]:
            _print(rec, args.json)
        sys.stdout.flush()
        if args.follow:
            client.sock.settimeout(None)
            try:
                _follow(client.reader, args.json)
            except KeyboardInterrupt:  # how -f ends: quietly, with success
                return EXIT_OK
    finally:
        client.close()
    return EXIT_OK


def _follow(reader: Any, as_json: bool) -> None:
    """Print each streamed line until the master closes the connection."""
    while True:
        try:
            line = reader.readline()
        except OSError:
            line = b""
        if not line:
            raise OrchError("the master closed the connection (it has exited)")
        message = json.loads(line)
        if "event" in message:
            _print(message["event"], as_json)
        elif "dropped" in message:
            _print_dropped(message["dropped"], as_json)
        sys.stdout.flush()


def _print(rec: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(rec) if as_json else format_event(rec))


def _print_dropped(count: int, as_json: bool) -> None:
    """A slow reader's gap: the master dropped `count` events rather than queue them."""
    if as_json:
        print(json.dumps({"ts": time.time(), "seq": None, "kind": "dropped", "instance": None,
                          "template": None, "count": count}))
    else:
        print(f"{_when(time.time())} dropped {count} events (this reader was too slow)")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def format_event(rec: dict[str, Any]) -> str:
    """One human line: time, kind, who, then the facts that are set, as key=value."""
    who = rec.get("instance") or (f"template:{rec['template']}" if rec.get("template") else "-")
    facts = [f"{key}={_value(value)}" for key, value in rec.items()
             if key not in _SHOWN and value is not None and value != ""]
    return f"{_when(rec['ts'])} {rec['kind']:<16} {who} {' '.join(facts)}".rstrip()


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace("\n", " | ")  # a located config error spans lines: one event, one line
    return json.dumps(text) if (" " in text or not text) else text
