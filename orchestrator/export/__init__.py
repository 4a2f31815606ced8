"""`orch export`: a validated, expanded config -> files for another process manager. One pure
module per format (specs in, files out); `run` is the edge that loads, writes and warns."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (every `orch` call reads FORMATS)
if TYPE_CHECKING:  # imported where used: the CLI reads FORMATS at every start, cheaply
    from .common import Options, Output

FORMATS = ("systemd", "supervisord", "kubernetes", "nomad", "procfile")
ELSEWHERE = ("kubernetes", "nomad")  # run on other hosts: no paths or interpreter of this one
EXIT_USAGE = 2  # as cli.EXIT_USAGE: a bad -o is the user's to fix, like a bad argument


def module(name: str) -> ModuleType:
    """The exporter module of a format."""
    from importlib import import_module
    return import_module(f".{name}", __name__)


def export(name: str, specs: list, options: Options) -> Output:
    """Files and warnings for one format (pure)."""
    if name in ELSEWHERE:
        from .common import portable
        specs = portable(specs, options)
    output = module(name).export(specs, options)
    if name not in ELSEWHERE:  # kubernetes and nomad scale them (export/autoscale.py)
        from .autoscale import fixed_warnings
        output.warnings += fixed_warnings(name, specs)
    return output


def run(name: str, config_path: Path, out_dir: Path | None, image: str | None,
        python: str | None, workdir: str | None) -> int:
    """Load, expand and export; write the files to `out_dir` (or print them), warnings to stderr.
    Returns 2 (usage error) when `out_dir` cannot be written, with one line saying why."""
    from ..config.load import load_config
    from ..expand.render import expand
    config = load_config(config_path)
    from .common import Options
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
    else:
        problem = write(out_dir, output.files)
        if problem is not None:
            print(f"orch: export: {problem}", file=sys.stderr)
            return EXIT_USAGE
        count = len(output.files)
        print(f"wrote {count} file{'s' if count != 1 else ''} to {out_dir}", file=sys.stderr)
    for line in make_folders(output.folders, name):
        print(line, file=sys.stderr)
    return 0


def write(out_dir: Path, files: dict[str, str]) -> str | None:
    """Write `files` into `out_dir` (made if missing); None, or why it could not."""
    if out_dir.exists() and not out_dir.is_dir():
        return f"-o {out_dir}: is a file, not a folder (give a folder to write the files into)"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"-o {out_dir}: cannot create this folder: {exc.strerror or exc}"
    for file, text in files.items():
        try:
            (out_dir / file).write_text(text, encoding="utf-8")
        except OSError as exc:
            return f"-o {out_dir}: cannot write {file} there: {exc.strerror or exc}"
    return None


def make_folders(folders: list[Path], target: str) -> list[str]:
    """Create the folders an export names (its log folder); a warning per one that fails."""
    warnings = []
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            warnings.append(f"orch export: cannot create {folder} ({exc.strerror or exc}): "
                            f"{target} will not start until it exists")
    return warnings
