"""`orch upgrade [--check]`: the master re-executes itself into the orch installed now,
keeping every instance running (handover/); `--check` only proves the new code can."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..control.client import ControlError
from .link import client_for

EXIT_OK = 0
WAIT = 300.0  # the master waits for a quiet moment, proves (a whole expansion), then execs


def cmd_upgrade(args: argparse.Namespace, path: Path) -> int:
    client = client_for(args, path, timeout=WAIT)
    try:
        result = client.call("upgrade", check=args.check)
    except ControlError as exc:
        if "unknown command" in str(exc):  # a master older than `orch upgrade` itself
            raise ControlError("this master's orch predates `orch upgrade`: restart it once "
                               "(orch down, orch up); later versions upgrade in place", 1) from None
        raise
    finally:
        client.close()
    if result.get("checked"):
        print(f"orch {result['to']} ({result['path']}) can take over from {result['from']}: "
              f"`orch upgrade` would re-execute master {result['pid']} into it")
    else:
        print(f"master {result['pid']} now runs orch {result['to']} (was {result['from']}); "
              f"{result['instances']} instances carried over, none restarted; the spawner and its "
              f"zygotes run orch {result['spawner']} until they are replaced")
    return EXIT_OK
