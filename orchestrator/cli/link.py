"""How a client command reaches the master of the config it names: `--socket`, $ORCH_SOCKET,
the record a running master wrote, then the file; and never another config's master."""

from __future__ import annotations

import os
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: 3-6 ms of every `orch` call
if TYPE_CHECKING:
    import argparse  # annotations only: its import is 5 ms of `orch status` (cli/quick.py)
    from typing import Any

from ..control.client import ControlClient
from ..control.record import live_record
from ..errors import ConfigError, NoMasterError


def client_for(args: argparse.Namespace, path: Path, timeout: float | None = 30.0) -> ControlClient:
    """A connection to the master of `path`, found without parsing the file when it can:
    `--socket`, $ORCH_SOCKET, the record a running master wrote for this config, then the
    file. Unless the socket was named (`--socket`, or $ORCH_SOCKET without `-c`), the master
    must run `path`: another config's master refuses the command (exit 3)."""
    record = None
    if "socket" in args:
        socket, check = Path(args.socket).absolute(), False
    elif os.environ.get("ORCH_SOCKET"):
        socket, check = Path(os.environ["ORCH_SOCKET"]).absolute(), "config" in args
    else:
        record, check = live_record(path), True
        if record is not None:
            socket = Path(record["socket"])
        else:
            from ..config.load import load_settings  # only without a record: imports the parser
            socket = load_settings(path).control_socket
    client = ControlClient(socket, timeout)
    try:
        if check:
            check_master(client, path, record)
    except BaseException:
        client.close()
        raise
    return client


def check_master(client: ControlClient, path: Path, record: dict | None) -> None:
    """Raise NoMasterError unless the master on `client` runs `path`, asked on the same
    connection (a master short of fds may pause its accepts). A ping answered by the pid
    that wrote `path`'s record settles it; otherwise its status names its config."""
    pong = client.call("ping")
    pid = pong["pid"]
    if record is not None and record.get("pid") == pid:
        return
    theirs = pong["config"] if "config" in pong else client.call("status", as_text=True).get("config")
    if theirs is None or os.path.realpath(theirs) != os.path.realpath(path):
        raise NoMasterError(f"the master at {client.path} (pid {pid}) runs {theirs}, not {path}: "
                            "name its config with -c, or pass --socket to use it anyway")


def ask(args: argparse.Namespace, path: Path, cmd: str, **kwargs: Any) -> Any:
    """One request to the master of `path` (see `_client`)."""
    client = client_for(args, path)
    try:
        return client.call(cmd, **kwargs)
    finally:
        client.close()


def log_dir(path: Path) -> Path:
    record = live_record(path)
    if record is not None:
        return Path(record["log_dir"])
    from ..config.load import load_settings
    return load_settings(path).log_dir


def disk_error(path: Path, reply: dict | None = None) -> str | None:
    """Why the config on disk would not load now (None when it would). When the files on
    disk are the ones the master last read (same digest), its verdict stands: no parse."""
    from ..config.load import load_config
    if reply is not None and reply.get("sources_digest"):
        from ..config.source import sources_digest
        if sources_digest(reply.get("sources", []), reply.get("include", [])) == reply["sources_digest"]:
            return reply.get("last_reload_error")
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return None
