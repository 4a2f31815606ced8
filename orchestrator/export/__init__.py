"""`orch export`: a validated, expanded config -> files for another process manager. One pure
module per format (specs in, files out); `run` is the edge that loads, writes and warns."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from .common import Options, Output, portable

FORMATS = ("systemd", "supervisord", "kubernetes", "nomad", "procfile")
ELSEWHERE = ("kubernetes", "nomad")  # run on other hosts: no paths or interpreter of this one


def module(name: str) -> ModuleType:
    """The exporter module of a format."""
    from importlib import import_module
    return import_module(f".{name}", __name__)


def export(name: str, specs: list, options: Options) -> Output:
    """Files and warnings for one format (pure)."""
    if name in ELSEWHERE:
        specs = portable(specs, options)
    return module(name).export(specs, options)


def run(name: str, config_path: Path, out_dir: Path | None, image: str | None,
        python: str | None, workdir: str | None) -> int:
    """Load, expand and export; write the files to `out_dir` (or print them), warnings to stderr."""
    from ..config.load import load_config
    from ..expand.render import expand
    config = load_config(config_path)
    options = Options(fleet=config.settings.name, config=config.path, folder=config.folder,
                      log_dir=config.settings.log_dir, image=image,
                      python=python or "python3", workdir=workdir or "/app", sockets=config.sockets)
    output = export(name, expand(config), options)
    for line in output.warnings:
        print(line, file=sys.stderr)
    if out_dir is None:
        for file, text in output.files.items():
            if len(output.files) > 1:
                print(f"# {file}")
            sys.stdout.write(text)
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    for file, text in output.files.items():
        (out_dir / file).write_text(text, encoding="utf-8")
    count = len(output.files)
    print(f"wrote {count} file{'s' if count != 1 else ''} to {out_dir}", file=sys.stderr)
    return 0
