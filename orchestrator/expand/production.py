"""One instance's run-as user, env files, rlimits, umask and stderr, rendered and resolved
for its `ProcessSpec` (render.py calls `setup_fields` once per instance)."""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ..config.load import Config, Template
from .envfile import EnvFileError, EnvFiles
from .identity import EXECUTE, READ, RunAs, access_problem, program_problem, resolve


class SetupError(ValueError):
    """A value of one of these keys that cannot be used; `key` is the key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class SetupContext:
    """What the instances of one expansion share: each env file is read once, each user
    looked up once."""

    def __init__(self) -> None:
        self.env_files = EnvFiles()
        self.users: dict[tuple, RunAs] = {}
        self.access: dict[tuple, str | None] = {}  # (run_as, key, program) -> why it cannot run


def reads_host(template: Template) -> bool:
    """Whether expanding the template reads env files or the user database: then its specs
    are made again at every load (a file or a uid may have changed), never reused."""
    return bool(template.env_file) or template.user is not None or template.group is not None \
        or template.groups is not None


def _needs_setup(template: Template) -> bool:
    return reads_host(template) or bool(template.rlimits) or template.umask is not None \
        or template.stderr != "merge"


def setup_fields(template: Template, context: dict[str, Any], folder: Path, renderer: Any,
                 step: list[str]) -> dict[str, Any]:
    """The spec fields of these keys for one instance (empty for a template using none);
    `step[0]` names the key being rendered, for a render error's key path. The env files
    and users of one expansion are shared through its `renderer` (one per expansion)."""
    fields: dict[str, Any] = {}
    if not _needs_setup(template):
        return fields
    shared = getattr(renderer, "setup", None)
    if shared is None:
        shared = renderer.setup = SetupContext()
    if template.user is not None or template.group is not None or template.groups is not None:
        user = _render(renderer, template.user, context, "user", step)
        group = _render(renderer, template.group, context, "group", step)
        groups = None if template.groups is None else tuple(
            _render(renderer, g, context, "groups", step) for g in template.groups)
        try:
            fields["run_as"] = resolve(user, group, groups, shared.users)
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            raise SetupError(key, message) from None
        _check_access(template, context, folder, renderer, fields["run_as"], shared)
    if template.env_file:
        written = []
        for raw in template.env_file:
            path = _render(renderer, raw, context, "env_file", step) or ""
            optional = path.startswith("-")
            path = path[1:] if optional else path
            if not path.strip():
                raise SetupError("env_file", f"{raw!r} renders to an empty path")
            written.append((str((folder / path).absolute()), optional))
        try:
            fields["env_files"], fields["file_env"] = shared.env_files.load(written)
        except EnvFileError as exc:
            raise SetupError("env_file", str(exc)) from None
    if template.rlimits:
        fields["rlimits"] = tuple(sorted(template.rlimits))
    if template.umask is not None:
        fields["umask"] = template.umask
    if template.stderr != "merge":
        fields["stderr"] = template.stderr
    return fields


def _program(template: Template, context: dict[str, Any], folder: Path, renderer: Any) -> tuple[str, str | None]:
    """(key, the program exec will run, None where PATH has none): render.py's argv[0]."""
    if template.target is not None:
        return "target", sys.executable
    if template.shell:
        return "command", "/bin/sh"
    first = (renderer.command(template.command, context) if isinstance(template.command, str)
             else [renderer.text(part, context) for part in template.command or ()])[0]
    if "/" in first:
        return "command", os.path.join(renderer.path(folder, template.cwd, context), first)
    path = dict(template.env).get("PATH")
    path = renderer.text(path, context) if isinstance(path, str) else os.environ.get("PATH", os.defpath)
    return "command", shutil.which(first, path=path)


def _check_access(template: Template, context: dict[str, Any], folder: Path, renderer: Any,
                  run_as: RunAs | None, shared: SetupContext) -> None:
    """A located error when another user could not run the program, or, for a Python worker,
    the interpreter or orch's own code (a Python under /root, mode 0700, is the usual case)."""
    if run_as is None or run_as.uid == os.geteuid():
        return
    key, program = _program(template, context, folder, renderer)
    if program is None:
        return
    if (run_as, key, program) not in shared.access:
        why = program_problem(run_as, program)
        if why is None and key == "target":
            package = str(Path(__file__).resolve().parents[1])
            found = access_problem(run_as, package, READ | EXECUTE)
            why = None if found is None else f"cannot read orch's code in {package}: {found}"
        shared.access[(run_as, key, program)] = why
    why = shared.access[(run_as, key, program)]
    if why is not None:
        who = run_as.user or f"uid {run_as.uid}"
        raise SetupError(key, f"user {who} {why}; make it reachable by that user, or leave out user")


def _render(renderer: Any, value: str | None, context: dict[str, Any], key: str, step: list[str]) -> str | None:
    if value is None:
        return None
    step[0] = key
    text = renderer.text(value, context).strip()
    if not text:
        raise SetupError(key, f"{value!r} renders empty")
    return text


def watch_env_files(config: Config, specs: list[Any]) -> None:
    """Add the env files the specs read to the config's watched sources, as its includes
    are: `config.files` (the watcher, and the digest that tells a real save from a re-save)
    gets the files that exist, `config.include_patterns` the optional ones still missing,
    so that creating one is a save too. The only change an expansion makes to its Config,
    once it succeeded: the files are known only after rendering."""
    found = {Path(f.path) for spec in specs for f in spec.env_files}
    if not found:
        return
    present = tuple(sorted(f for f in found if os.path.exists(f)))
    missing = tuple(sorted(glob.escape(str(f)) for f in found if not os.path.exists(f)))
    files = config.files + tuple(f for f in present if f not in config.files)
    patterns = config.include_patterns + tuple(p for p in missing if p not in config.include_patterns)
    object.__setattr__(config, "files", files)  # frozen for everyone else
    object.__setattr__(config, "include_patterns", patterns)
