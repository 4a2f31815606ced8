"""`orch up` after an upgrade's exec (ORCH_HANDOVER set): the same process, new code. Rebuild
the master from the record the old code left (handover/) and run it; or, for the proof
child (ORCH_HANDOVER=check), only say whether that would work."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ..config.load import TemplateCache, load_config
from ..control.record import remove_record
from ..handover.carry import ENV, Taken, read_record
from ..handover.beside import BesideHandover, spawners
from ..config.source import overlay
from ..handover.resume import Handover, applied_sources, listeners_from
from ..handover.state import migrate
from ..spawn.pidfile import PidLock
from ..title import set_title
from .up import setup_logging

log = logging.getLogger("orch")


def run_resumed() -> int:
    value = os.environ.pop(ENV)  # never seen by the spawner, the children or the next upgrade
    if value == "check":
        from ..handover.proof import check
        return check()
    log_handler = setup_logging()
    record = migrate(read_record(int(value)))
    taken = Taken(record["fds"])
    from ..expand.render import expand
    from ..master import Master
    templates = TemplateCache()
    with overlay(applied_sources(record)):  # the config the fleet runs: a save waits for its reload
        config = load_config(Path(record["config"]), templates)
        specs = expand(config)
    lock = PidLock(config.settings.pidfile)
    lock.fd = taken.plain(record["fds"]["lock"])
    sock = taken.sock(record["fds"]["spawner"])
    assert sock is not None
    spawner, olds = spawners(record, taken, sock, config.settings)  # a new one beside an old protocol's
    listeners = listeners_from(record, taken, config)
    set_title(f"orch: master {config.settings.name} [{config.path}]")
    master = Master(config, specs, spawner, lock, quiet=record["quiet"], listeners=listeners, templates=templates)
    master.loop.before_wait.append(log_handler.flush)
    try:
        handover = BesideHandover(record, taken, olds) if olds else Handover(record, taken)
        code = master.run(handover=handover)
    finally:
        remove_record(config.path)
        log_handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
