"""`orch dashboard`: the running master's dashboard address, token included."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .link import ask


def cmd_dashboard(args: argparse.Namespace, path: Path) -> int:
    reply = ask(args, path, "dashboard")
    if args.json:
        print(json.dumps(reply))
    else:
        print(reply["url"])
    return 0
