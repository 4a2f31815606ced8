"""What every exporter shares: options, the result, warnings for keys a target cannot express,
and the rewrite that makes specs host-independent (pure)."""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config.keys import BY_PATH, POLICY_KEYS, POLICY_SUB_KEYS
from ..errors import ConfigError, ConfigProblem
from ..expand.spec import ProcessSpec


@dataclass(frozen=True)
class Options:
    """What the command line adds to a config: the fleet's name and the target's paths."""

    fleet: str
    config: Path
    folder: Path
    log_dir: Path
    image: str | None = None
    python: str = "python3"
    workdir: str = "/app"
    sockets: tuple = ()  # the config's [sockets.*] declarations (config.sockets.SocketDecl)


@dataclass
class Output:
    """An export: file name -> text, one warning line per key the target cannot express, and
    the folders on this host that the files name and the target will not create."""

    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)  # must exist before the target reads the files


def unexpressed(target: str, specs: list[ProcessSpec], attrs: tuple[str, ...]) -> list[str]:
    """One warning per policy field in `attrs` that some template sets to a non-default value."""
    by_attr = {k.attr: k for k in POLICY_KEYS + POLICY_SUB_KEYS}
    warnings = []
    for attr in attrs:
        key = by_attr[attr]
        default = BY_PATH[key.default_from].value if key.default_from else key.value
        templates = sorted({s.template for s in specs if getattr(s.policy, attr) != default})
        if templates:
            warnings.append(f"orch export: {target} cannot express {key.path} "
                            f"(set in {', '.join(templates)}): left out")
    return warnings


def process_warnings(target: str, specs: list[ProcessSpec], inherit: bool,
                     sockets: str = "none") -> list[str]:
    """Warnings for template keys a target cannot honour: `preload` (no zygote outside orch),
    where `inherit` is False `inherit = false` (the target passes its own environment), and
    the shared listening sockets the master would hold: `sockets` is "held" where the target
    holds them (systemd), "bound" where each process binds its own (see bind_sockets), else
    "none"."""
    warnings = []
    shared = sorted({s.template for s in specs if s.sockets})
    if shared and sockets == "none":
        warnings.append(f"orch export: {target} cannot express workers.*.sockets "
                        f"(set in {', '.join(shared)}): no shared socket is passed; left out")
    elif shared and sockets == "bound":
        warnings.append(f"orch export: {target} cannot hold workers.*.sockets "
                        f"(set in {', '.join(shared)}): each process binds its own (TCP with "
                        "SO_REUSEPORT), so connections queued at a stopping process are reset")
    preload = sorted({s.template for s in specs if s.python is not None and s.python.preload})
    if preload:
        warnings.append(f"orch export: {target} cannot express workers.*.preload "
                        f"(set in {', '.join(preload)}): left out")
    clean = sorted({s.template for s in specs if not s.inherit_env})
    if clean and not inherit:
        warnings.append(f"orch export: {target} cannot express workers.*.inherit = false "
                        f"(set in {', '.join(clean)}): left out")
    return warnings


def refuse(specs: list[ProcessSpec], options: Options, target: str, what: str,
           bad: "re.Pattern[str]", where: str = "both", files: bool = False) -> None:
    """Raise a ConfigError naming every template key whose rendered value matches `bad`:
    in the argv, the env values, both, or the instance name (`where`); with `files`, the
    env files' values too (for a target that inlines them: named, never quoted)."""
    problems: dict[str, ConfigProblem] = {}
    for spec in specs:
        places = [("command", a) for a in spec.argv] if where in ("argv", "both") else []
        places += [(f"env.{k}", v) for k, v in spec.env] if where in ("env", "both") else []
        places += [("name", spec.name)] if where == "name" else []
        places += [(f"env_file ({k})", v) for k, v in spec.file_env] if files and where != "argv" else []
        for key, text in places:
            keypath = f"workers.{spec.template}.{key}"
            if bad.search(text) and keypath not in problems:
                problems[keypath] = ConfigProblem(str(options.config), keypath,
                                                  f"{target} cannot carry {what} (instance {spec.name})")
    if problems:
        raise ConfigError(list(problems.values()))


def portable(specs: list[ProcessSpec], options: Options) -> list[ProcessSpec]:
    """Specs with this machine's interpreter replaced by `options.python` and paths under the
    config's folder moved under `options.workdir`, for targets that run elsewhere."""
    folder = str(options.folder)

    def move(text: str) -> str:
        if text == sys.executable:
            return options.python
        if text == folder or text.startswith(folder + "/"):
            return options.workdir.rstrip("/") + text[len(folder):] or "/"
        return text.replace(folder + "/", options.workdir.rstrip("/") + "/")

    moved = []
    for spec in specs:
        python = spec.python
        if python is not None:
            python = dataclasses.replace(python, pythonpath=tuple(move(p) for p in python.pythonpath))
        argv = tuple(move(a) for a in spec.argv)
        env = tuple((k, move(v)) for k, v in spec.env)
        probes = tuple(dataclasses.replace(p, argv=tuple(move(a) for a in p.argv)) if p.argv else p
                       for p in spec.probes)  # an exec probe runs there too
        moved.append(dataclasses.replace(spec, argv=argv, env=env, cwd=move(spec.cwd), python=python, probes=probes))
    return moved


def seconds(value: float) -> str:
    """A number of seconds as the shortest exact text: 10, 1.5, 0.25."""
    return f"{value:g}" if value != int(value) else str(int(value))


def bind_sockets(specs: list[ProcessSpec], options: Options, target: str) -> list[ProcessSpec]:
    """For targets without a master to hold `[sockets.*]`: each spec that uses sockets runs
    under `orchestrator.worker.listen`, which binds them itself at fds 3, 4, ... and execs
    the command. A `unix:` socket has one holder only, so two instances sharing one are
    refused."""
    backlog = {decl.name: decl.backlog for decl in options.sockets}
    users: dict[str, list[ProcessSpec]] = {}
    for spec in specs:
        for name, address in spec.sockets:
            if address.startswith("unix:"):
                users.setdefault(name, []).append(spec)
    shared = {f"workers.{group[0].template}.sockets": ConfigProblem(
        str(options.config), f"workers.{group[0].template}.sockets",
        f"{target} cannot share the unix: socket {name} between instances "
        f"({', '.join(s.name for s in group)}): each binds its own there, and a unix path has one holder")
        for name, group in users.items() if len(group) > 1}
    if shared:
        raise ConfigError(list(shared.values()))
    wrapped = []
    for spec in specs:
        if spec.sockets:
            words = [f"{name}/{backlog.get(name, 1024)}={address}" for name, address in spec.sockets]
            argv = (sys.executable, "-m", "orchestrator.worker.listen", *words, "--", *spec.argv)
            spec = dataclasses.replace(spec, argv=argv)
        wrapped.append(spec)
    return wrapped
