"""The commands that need no master: up, check, plan, export, schema and queues."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE = 0, 2


def cmd_up(args: argparse.Namespace, path: Path) -> int:
    if "ORCH_HANDOVER" in os.environ:  # an upgrade's exec (or its proof): handover/, cli/resume.py
        from .resume import run_resumed
        return run_resumed()
    from .up import run_up
    return run_up(path, quiet=args.quiet, detach=args.detach, fresh=args.fresh)


def cmd_check(args: argparse.Namespace, path: Path) -> int:
    from ..expand.render import check, summary  # Jinja: only the commands that render pay for it
    print(summary(*check(path)))
    return EXIT_OK


def cmd_plan(args: argparse.Namespace, path: Path) -> int:
    if args.diff:
        from .client_commands import cmd_diff
        return cmd_diff(args, path)
    from ..config.load import load_config
    from ..expand.render import expand, summary
    config = load_config(path)
    specs = expand(config)
    if args.json:
        print(json.dumps([{
            "name": s.name, "template": s.template, "params": dict(s.params), "replica": s.replica,
            "argv": list(s.argv), "env": dict(s.env), "cwd": s.cwd, "hash": s.process_hash,
            "policy_hash": s.policy_hash,
        } for s in specs], indent=2, default=str))
        return EXIT_OK
    width = max([len(s.name) for s in specs] + [4])
    print(f"{'NAME':<{width}}  {'HASH':<16}  COMMAND")
    for s in specs:
        print(f"{s.name:<{width}}  {s.process_hash:<16}  {' '.join(_quote(a) for a in s.argv)}")
    print(summary(config, specs))
    return EXIT_OK


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


def cmd_export(args: argparse.Namespace, path: Path) -> int:
    from ..export import run
    if args.format == "kubernetes" and not args.image:
        print("orch: export --format kubernetes needs --image IMAGE", file=sys.stderr)
        return EXIT_USAGE
    return run(args.format, path, Path(args.output) if args.output else None, args.image,
               args.python, args.workdir)


def cmd_schema(args: argparse.Namespace, path: Path) -> int:
    from ..config.schema import render
    sys.stdout.write(render())
    return EXIT_OK


def cmd_queues(args: argparse.Namespace, path: Path) -> int:
    from .queues_admin import run_queues  # redis / greenstalk: only this command pays for them
    return run_queues(path, args.action, args.queue, args.json)
