"""Where a config's master listens, found from the config's path alone (no parsing).

The master writes a small JSON record, named by a digest of the config's path, into a
per-user folder ($XDG_RUNTIME_DIR/orch, else /tmp/orch-UID, mode 0700). Client commands read
it first, so `orch status`, `orch reload` and `orch down` reach the running master even
while the file on disk does not parse. A record left by a killed master is harmless: its
socket no longer exists, and the client then falls back to the file's control_socket.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: 3-6 ms of every `orch` call
if TYPE_CHECKING:
    from typing import Any

try:  # CPython's built-in sha256: hashlib first loads OpenSSL, 4-5 ms of every `orch` call
    from _sha256 import sha256
except ImportError:  # other versions and builds
    from hashlib import sha256


def config_key(config: Path) -> str:
    """The config's path with its folder resolved but not the file itself: a ConfigMap's
    `workers.toml -> ..data/workers.toml` keeps one key across swaps."""
    path = os.path.abspath(config)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def records_folder(create: bool = False) -> Path | None:
    """The per-user folder, or None when it is not safely ours (another owner, a symlink)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "orch" if runtime and os.path.isdir(runtime) else Path(f"/tmp/orch-{os.getuid()}")
    try:
        if create:
            folder.mkdir(mode=0o700, parents=False, exist_ok=True)
        info = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return folder


def record_path(config: Path, create: bool = False) -> Path | None:
    folder = records_folder(create)
    if folder is None:
        return None
    return folder / (sha256(config_key(config).encode()).hexdigest()[:24] + ".json")


def write_record(config: Path, socket: Path, log_dir: Path) -> None:
    """Record this process as the master of `config` (best effort: clients can still parse)."""
    path = record_path(config, create=True)
    if path is None:
        return
    data = {"config": config_key(config), "socket": str(socket), "log_dir": str(log_dir), "pid": os.getpid()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def remove_record(config: Path) -> None:
    """Remove the record if it is still this process's (a newer master may have replaced it)."""
    path = record_path(config)
    record = read_record(config)
    if path is not None and record is not None and record.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def read_record(config: Path) -> dict[str, Any] | None:
    """The record of the master of `config`, if one is written."""
    path = record_path(config)
    try:
        data = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("config") != config_key(config):
        return None
    return data


def live_record(config: Path) -> dict[str, Any] | None:
    """The record, if its socket still exists (its master has not exited)."""
    record = read_record(config)
    try:
        if record is not None and stat.S_ISSOCK(os.stat(record["socket"]).st_mode):
            return record
    except (OSError, KeyError, TypeError):
        pass
    return None
